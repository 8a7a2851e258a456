"""A self-contained HTML report: the Markdown summary rendered as simple HTML, with every
plot embedded as a base64 PNG so the single file can be mailed or attached to a ticket."""

import base64
import html
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
    "text-align:right}th{background:#f3f3f3}img{max-width:48%;margin:1%}code{background:#f3f3f3}"
)


def markdown_to_html(md: str) -> str:
    """Just the Markdown the reports write: headings, bullet lists, pipe tables, paragraphs."""
    out, rows, in_list = [], [], False

    def flush_table() -> None:
        if rows:
            head, body = rows[0], rows[2:]  # rows[1] is the |---| separator
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            rows.clear()

    for raw in md.splitlines():
        line = html.escape(raw)
        if raw.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush_table()
        if in_list and not raw.startswith("- "):
            out.append("</ul>")
            in_list = False
        if raw.startswith("#"):
            level = len(raw) - len(raw.lstrip("#"))
            out.append(f"<h{level}>{line[level:].strip()}</h{level}>")
        elif raw.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{line[2:]}</li>")
        elif raw.strip():
            out.append(f"<p>{line}</p>")
    flush_table()
    if in_list:
        out.append("</ul>")
    return "\n".join(out).replace("`", "")


def write_html(path: Path, title: str, markdown: str, pngs: list[Path]) -> Path:
    images = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in pngs
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{markdown_to_html(markdown)}<h2>Plots</h2>{images}</body></html>"
    )
    path.write_text(page)
    return path
