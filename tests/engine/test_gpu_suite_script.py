"""benchmarks/gpu_suite.py runs whole with --tiny (its logic on CPU, a tiny model) and writes one
JSON with every figure the GPU run reports, its correctness checks passed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_tiny_writes_every_figure(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    script = ROOT / "benchmarks" / "gpu_suite.py"
    subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(out)],
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    for key in ("herd_none", "herd_fp8"):
        r = result[key]
        assert r["batch1_tok_s"] > 0 and r["offline_tok_s"] > 0
        assert r["at_rate"]["ttft_ms_p50"] > 0 and r["at_rate"]["itl_ms_p50"] > 0
        assert r["kv_gib"] > 0
    # fp8 weights take fewer bytes than bf16 ones (the decoder linears halve)
    assert result["herd_fp8"]["weight_gib"] < result["herd_none"]["weight_gib"]
    assert result["transformers_bf16"]["batch1_tok_s"] > 0
    for part in ("check_attention", "check_graphs", "check_fp8", "check_layer_ops"):
        assert result[part]["ok"], result[part]
    assert result["checks_ok"] is True
    assert result["check_attention"]["triton_rel_err"] < 1e-2  # interpreted: the tests set it
    assert all(ms > 0 for ms in result["attention_ms"]["decode_8x40"].values())
    assert result["check_graphs"]["buckets_run"] == [1, 4, 8]  # batches 1, 3 (padded), 8
    assert not any("error" in v for v in result.values() if isinstance(v, dict))
