"""`herd plan` end to end through the CLI: tables, JSON, capacity from a bench file, errors."""

import json

import pytest

from herd.cli import main


def run(argv, capsys):
    code = main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_json_lists_each_combination(capsys):
    code, out, _ = run(
        ["--model", "llama-3.1-8b", "--tp", "1,2", "--precision", "bf16,fp8", "--json"], capsys
    )
    assert code == 0
    plans = json.loads(out)["plans"]
    assert [(p["tp"], p["precision"]) for p in plans] == [
        (1, "bf16"),
        (1, "fp8"),
        (2, "bf16"),
        (2, "fp8"),
    ]
    assert plans[0]["weights_gib_per_gpu"] == pytest.approx(14.96, abs=0.01)


def test_plan_table(capsys):
    code, out, _ = run(["--model", "Llama-3.3-70B", "--gpu", "H200", "--tp", "8"], capsys)
    assert code == 0 and "Llama-3.3-70B" in out and "16.43" in out


def _bench_file(tmp_path, gpus=1):
    def level(conc, rps, fraction):
        return {
            "load": {"kind": "concurrency", "value": conc},
            "requests": {"ok": 100, "failed": 0},
            "throughput": {"requests_per_s": rps},
            "goodput": {"fraction": fraction},
            "e2e_ms": {"mean": 1000.0},
        }

    data = {"schema": "herd.bench.run/1", "label": "8b-h100", "gpus": gpus, "gpu_hour_cost": 2.5,
            "levels": [level(4, 3.0, 1.0), level(16, 10.0, 0.95), level(64, 14.0, 0.5)]}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_plan_capacity_from_bench(tmp_path, capsys):
    bench = _bench_file(tmp_path, gpus=2)
    code, out, _ = run(
        ["--model", "llama-3.1-8b", "--bench", bench, "--target-rps", "95", "--json"], capsys
    )
    cap = json.loads(out)["capacity"]
    # Best level within SLO is concurrency 16 at 10 req/s (64 misses it): ceil(95/10) = 10 replicas.
    assert code == 0 and cap["replicas"] == 10 and cap["gpus"] == 20
    assert cap["cost_per_hour"] == pytest.approx(50.0)
    code, out, _ = run(
        ["--model", "llama-3.1-8b", "--bench", bench, "--target-users", "100"], capsys
    )
    assert code == 0 and "7 replica(s)" in out  # ceil(100 / 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "gpt-5"], "unknown model"),
        (["--model", "llama-3.1-8b", "--gpu", "TPU"], "unknown GPU"),
        (["--model", "llama-3.1-8b", "--precision", "fp4"], "unknown precision"),
        (["--model", "llama-3.1-8b", "--tp", "3"], "must divide"),
        (["--model", "llama-3.1-8b", "--target-rps", "3"], "need --bench"),
        (
            ["--model", "llama-3.1-8b", "--bench", "/nonexistent.json", "--target-rps", "1"],
            "cannot read",
        ),
    ],
)
def test_plan_errors_are_one_line(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert (
        code == 2
        and message in err
        and len(err.strip().splitlines()) == 1
        and "Traceback" not in err
    )
