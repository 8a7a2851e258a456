"""Every public class under src/herd says what it is for: read from the source with `ast`, so a
class added without a docstring fails here with its place named."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "herd"


def test_every_public_class_has_a_docstring():
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                if not (ast.get_docstring(node) or "").strip():
                    missing.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}")
    assert not missing, "public classes without a docstring:\n" + "\n".join(missing)
