"""The autoscaling simulator: SLO and replica-second accounting on traces small enough to work
out by hand, the shipped spike trace (autoscaled beats a static fleet on replica-seconds), the
trace and bench readers, and `herd autoscale simulate` end to end."""

import json
from pathlib import Path

import pytest

from herd.cli import main
from herd.fleet.autoscale_sim import compare, simulate, static_size
from herd.fleet.config import AutoscaleConfig
from herd.fleet.replica_model import ReplicaModel, fit_replica_model, load_bench_json
from herd.fleet.traces import Trace, read_trace

TRACES = Path(__file__).resolve().parents[2] / "benchmarks" / "traces"


def bench(points, kind="concurrency") -> dict:
    """A herd.bench.run/1 result with one level per (load, requests/s, TTFT ms)."""
    levels = []
    for load, rps, ttft_ms in points:
        levels.append({
            "load": {"kind": kind, "value": load},
            "requests": {"ok": 50, "failed": 0},
            "throughput": {"requests_per_s": rps},
            "ttft_ms": {"mean": ttft_ms, "p50": ttft_ms, "p90": 2 * ttft_ms, "p99": 3 * ttft_ms},
            "e2e_ms": {"mean": 2000.0},
        })  # fmt: skip
    return {"schema": "herd.bench.run/1", "schema_version": 1, "label": "tiny", "levels": levels}


SYNTHETIC = [(1, 1.0, 200), (4, 3.0, 400), (8, 4.5, 900), (16, 5.0, 2500)]


def fixed(n: int, **kw) -> AutoscaleConfig:
    return AutoscaleConfig(enabled=True, min_replicas=n, max_replicas=max(n, 1), **kw)


def test_slo_accounting_by_hand():
    # One replica: 2 in flight at most, 2 completed per second, TTFT 0.1 s; SLO 0.5 s.
    model = fit_replica_model(bench([(2, 2.0, 100)]))
    trace = Trace((0.0, 2.0, 4.0), (4.0, 0.0))  # 4 req/s for 2 s, then nothing for 2 s
    res = simulate(trace, model, fixed(1, ttft_slo_s=0.5), cold_start_s=0.0)
    # t=0: 4 arrive, 2 admitted at once (met), 2 wait. t=1: 4 more; the 2 from t=0 go (waited
    # 1 s: missed). t=2 and t=3: the 4 from t=1 go, 2 a second (waited 1 and 2 s: missed).
    assert res.arrived == pytest.approx(8)
    assert res.met == pytest.approx(2)
    assert res.slo_attainment == pytest.approx(0.25)
    assert res.unserved == pytest.approx(0)
    assert res.replica_seconds == pytest.approx(4)
    assert res.series["queued"] == pytest.approx([2, 4, 2, 0])


def test_cold_start_from_zero_by_hand():
    # Plenty of room per replica (8 in flight, 8/s), TTFT 0.1 s, SLO 2 s, cold start 5 s.
    model = fit_replica_model(bench([(8, 8.0, 100)]))
    trace = Trace((0.0, 10.0, 20.0), (0.0, 1.0))  # idle 10 s, then 1 req/s for 10 s
    config = fixed(0, ttft_slo_s=2.0, idle_timeout_s=60.0)
    res = simulate(trace, model, config, cold_start_s=5.0)
    # The request at t=10 starts a replica, ready at t=15: arrivals at t=10..13 waited 5..2 s
    # (missed), t=14 waited 1 s and t=15..19 none (met).
    assert res.arrived == pytest.approx(10)
    assert res.met == pytest.approx(6)
    assert res.replica_seconds == pytest.approx(10)  # starting from t=10, counted while starting
    assert res.series["ready"][14:16] == [0, 1]
    assert res.decisions == {"up": 1, "down": 0}


def test_a_replica_faster_than_a_tick_serves_its_measured_throughput():
    # 2 in flight at 20 req/s: each request takes 0.1 s, ten turns of a slot per 1 s tick.
    model = fit_replica_model(bench([(2, 20.0, 10)]))
    assert model.min_service_s == pytest.approx(0.1)
    ok = simulate(Trace((0.0, 60.0), (15.0,)), model, fixed(1, ttft_slo_s=0.5), 0.0)
    assert ok.slo_attainment == pytest.approx(1.0)
    assert max(ok.series["queued"]) < 1
    over = simulate(Trace((0.0, 60.0), (25.0,)), model, fixed(1, ttft_slo_s=0.5), 0.0)
    assert over.unserved == pytest.approx(5 * 60, rel=0.05)  # 25 arrive, 20 served, each second


def test_requests_are_conserved():
    model = fit_replica_model(bench(SYNTHETIC))
    trace = read_trace(TRACES / "spike.csv")
    config = AutoscaleConfig(enabled=True, max_replicas=3, scale_up_window_s=30.0)
    res = simulate(trace, model, config, cold_start_s=60.0)
    assert res.unserved >= 0
    assert res.admitted + res.unserved == pytest.approx(res.arrived)
    assert 0 < res.met <= res.admitted


def test_autoscaled_uses_fewer_replica_seconds_than_static_on_the_spike():
    model = fit_replica_model(bench(SYNTHETIC))
    trace = read_trace(TRACES / "spike.csv")
    config = AutoscaleConfig(enabled=True, max_replicas=6)
    auto, static = compare(trace, model, config, cold_start_s=30.0)
    assert static_size(trace, model, config.ttft_slo_s) == 3  # peak ~12.7 req/s / 4.5 per replica
    assert static.name == "static 3" and static.peak_replicas == 3
    assert auto.replica_seconds < 0.9 * static.replica_seconds
    assert static.slo_attainment > 0.99
    assert 0.8 < auto.slo_attainment < static.slo_attainment  # the cold start costs the burst
    assert auto.decisions["up"] >= 1 and auto.decisions["down"] >= 1
    assert auto.peak_replicas > 1


def test_trace_arrivals_integrate_uneven_rows():
    trace = Trace((0.0, 1.5, 3.0), (2.0, 4.0))
    assert trace.arrivals_per_tick(1.0) == pytest.approx([2.0, 3.0, 4.0])
    assert trace.duration_s == 3.0 and trace.peak_rps == 4.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("t,rate\n0,1\n1,0\n", "header"),
        ("time_s,requests_per_s\n0,1\n", "at least two rows"),
        ("time_s,requests_per_s\n0,1\n0,1\n", "strictly increasing"),
        ("time_s,requests_per_s\n0,-1\n1,0\n", ">= 0"),
        ("time_s,requests_per_s\n0,x\n1,0\n", "not two numbers"),
    ],
)
def test_bad_traces_are_refused(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trace(path)


def test_shipped_traces_match_their_description():
    diurnal, spike = read_trace(TRACES / "diurnal.csv"), read_trace(TRACES / "spike.csv")
    assert diurnal.duration_s == 86400 and len(diurnal.rates) == 1440
    assert spike.duration_s == 1800
    base = sum(spike.rates[:60]) / 60
    top = sum(spike.rates[60:90]) / 30
    assert 8 < top / base < 12  # a 10x spike


def test_replica_model_interpolates_and_reads_open_loop_levels():
    model = fit_replica_model(bench(SYNTHETIC))
    assert model.throughput(0) == 0 and model.throughput(2) == pytest.approx(5 / 3)
    assert model.throughput(100) == 5.0  # past the last level the last value holds
    assert model.ttft(6) == pytest.approx(0.65)
    assert model.capacity_rps(2.0) == 4.5 and model.capacity_rps(0.1) == 1.0
    # Open loop: concurrency by Little's law, 2 req/s x 2 s mean E2E = 4 in flight.
    open_loop = fit_replica_model(bench([(2.0, 2.0, 300)], kind="rate"))
    assert open_loop.concurrency == (4.0,)
    p90 = fit_replica_model(bench(SYNTHETIC), percentile="p90")
    assert p90.ttft_s[0] == pytest.approx(0.4)


def test_replica_model_refuses_what_it_cannot_use(tmp_path):
    empty = bench([(1, 1.0, 100)])
    empty["levels"][0]["requests"]["ok"] = 0
    with pytest.raises(ValueError, match="no level"):
        fit_replica_model(empty)
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="not a herd bench results file"):
        load_bench_json(tmp_path / "x.json")
    with pytest.raises(ValueError, match="ascending"):
        ReplicaModel((2.0, 1.0), (1.0, 1.0), (0.1, 0.1))


def test_cli_simulates_end_to_end(tmp_path, capsys):
    bench_path, png = tmp_path / "results.json", tmp_path / "sim.png"
    bench_path.write_text(json.dumps(bench(SYNTHETIC)))
    config = tmp_path / "serve.toml"
    config.write_text("[autoscale]\nmax_replicas = 5\ncooldown_s = 10\n")
    argv = ["autoscale", "simulate", "--trace", str(TRACES / "spike.csv"), "--bench",
            str(bench_path), "--png", str(png), "--config", str(config), "--max-replicas", "6",
            "--cost-per-replica-hour", "2.5", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["autoscale"]["max_replicas"] == 6  # the flag wins over the file
    assert out["autoscale"]["cooldown_s"] == 10  # the file wins over the default
    auto, static = out["runs"]
    assert static["cost"] == pytest.approx(static["replica_hours"] * 2.5)
    assert auto["replica_seconds"] < static["replica_seconds"]
    assert main(argv[:-1]) == 0  # the table
    text = capsys.readouterr().out
    assert "autoscaled" in text and "static 3" in text and "replica-seconds" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trace", "/nonexistent.csv"], "cannot read trace"),
        (["--min-replicas", "5", "--max-replicas", "2"], "min_replicas <= max_replicas"),
        (["--rate-scale", "0"], "--rate-scale"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    bench_path = tmp_path / "results.json"
    bench_path.write_text(json.dumps(bench(SYNTHETIC)))
    argv = ["autoscale", "simulate", "--trace", str(TRACES / "spike.csv"), "--bench",
            str(bench_path), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
