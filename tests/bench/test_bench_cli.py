"""`herd bench run` / `herd bench compare` through the CLI: files written and non-empty,
compare on two saved runs, and one-line errors for bad flags and unreachable endpoints."""

import json
import socket

import pytest

from herd.cli import main


def bench(argv, capsys):
    try:
        code = main(["bench", *argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_args(server, out_dir, *extra):
    return ["run", "--base-url", server.base_url, "--concurrency", "1,2", "--num-requests", "6",
            "--input-len", "8", "--output-len", "4", "--output-dir", str(out_dir), *extra]  # fmt: skip


def test_run_writes_every_report_then_compare(fake_server, tmp_path, capsys):
    server = fake_server(ttft_s=0.01, per_token_s=0.002)
    extra = ["--gpus", "2", "--gpu-hour-cost", "3", "--slo", "ttft=1s,tpot=100ms", "--repeats", "2"]
    code, out, err = bench(run_args(server, tmp_path / "a", "--label", "A", *extra), capsys)
    assert code == 0, err
    assert "TTFT p50 ms" in out and "c=2" in out
    for name in ("results.json", "results.csv", "results.md", "report.html", "dataset.jsonl",
                 "throughput.png", "ttft.png", "itl.png", "latency_throughput.png"):  # fmt: skip
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["schema"] == "herd.bench.run/1"
    assert "api_key" not in results["target"]
    level = results["levels"][0]
    assert level["requests"]["ok"] == 12 and len(level["repeats"]) == 2
    assert level["cost"]["usd_per_million_output_tokens"] > 0
    # 2 GPUs at $3/h: $6/h over the measured output rate.
    expect = 6 / 3600 / level["throughput"]["output_tokens_per_s"] * 1e6
    assert level["cost"]["usd_per_million_output_tokens"] == pytest.approx(expect)

    code, _, err = bench(run_args(server, tmp_path / "b", "--label", "B", "--gpus", "4"), capsys)
    assert code == 0, err
    code, out, err = bench(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "results.json"),
                            "--output-dir", str(tmp_path / "cmp")], capsys)  # fmt: skip
    assert code == 0, err
    assert "B / A" in out and "beyond noise" in out and "scaling efficiency" in out
    assert (tmp_path / "cmp" / "compare.html").stat().st_size > 1000
    assert (tmp_path / "cmp" / "throughput.png").stat().st_size > 0
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cmp["labels"] == ["A", "B"] and cmp["gpus"] == [2, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--concurrency", "1"], "--base-url"),
        (["run", "--base-url", "http://x/v1", "--concurrency", "a,b"], "comma-separated"),
        (["run", "--base-url", "x:8000", "--concurrency", "1"], "http://"),
        (["run", "--base-url", "http://x/v1"], "--concurrency, --rate or --sweep"),
        (["run", "--base-url", "http://x/v1", "--concurrency", "0"], ">= 1"),
        (["run", "--base-url", "http://x/v1", "--rate", "1", "--slo", "ttft=fast"], "bad --slo"),
        (["run", "--base-url", "http://x/v1", "--rate", "1", "--workload", "jsonl"], "--dataset"),
        (["compare", "/nonexistent.json", "/nonexistent2.json"], "cannot read"),
    ],
)
def test_bad_flags_give_one_line_errors(argv, message, capsys):
    code, _, err = bench(argv, capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_flag_is_refused_without_traceback(capsys):
    # Unknown flags are reported by the top-level `herd` parser (usage line + error line).
    code, _, err = bench(["run", "--base-url", "http://x/v1", "--rate", "1", "--bogus"], capsys)
    assert code == 2 and "unrecognized arguments: --bogus" in err and "Traceback" not in err


def test_unreachable_endpoint_is_one_line(capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    code, _, err = bench(
        ["run", "--base-url", url, "--concurrency", "1", "--num-requests", "1"], capsys
    )
    assert code == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1


def test_compare_needs_two_runs(fake_server, tmp_path, capsys):
    server = fake_server()
    assert bench(run_args(server, tmp_path / "a", "--no-plots"), capsys)[0] == 0
    code, _, err = bench(["compare", str(tmp_path / "a")], capsys)
    assert code == 2 and "at least two" in err
