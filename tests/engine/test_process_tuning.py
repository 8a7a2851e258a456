"""Process tuning: which parts `HERD_PROCESS_TUNING` asks for, the environment planned from the
libraries found (the caller's settings kept), and a real re-exec whose process then has the
libraries mapped, as the kernel's loader reports them in /proc/self/maps."""

import json
import subprocess
import sys

import pytest

from herd.engine import process_tuning as pt


def test_requested_parts():
    assert pt.requested_parts({}) == pt.DEFAULT_PARTS
    assert pt.requested_parts({pt.ENV: "0"}) == ()
    assert pt.requested_parts({pt.ENV: "off"}) == ()
    assert pt.requested_parts({pt.ENV: "all"}) == pt.PARTS
    assert pt.requested_parts({pt.ENV: "tcmalloc, bind"}) == ("tcmalloc", "bind")
    with pytest.raises(ValueError, match="jemalloc"):
        pt.requested_parts({pt.ENV: "jemalloc"})


def test_plan_keeps_the_callers_settings_and_skips_missing_libraries(monkeypatch):
    monkeypatch.setattr(
        pt, "find_library", lambda part: "/x/libiomp5.so" if part == "iomp" else None
    )
    env, t = pt.tuned_environ(("tcmalloc", "iomp", "bind"), {"KMP_BLOCKTIME": "200"})
    assert env["LD_PRELOAD"] == "/x/libiomp5.so"
    assert env["KMP_BLOCKTIME"] == "200"  # set by the caller: kept
    assert env["KMP_AFFINITY"].startswith("granularity=fine")  # bound through Intel's runtime
    assert t.missing == ["tcmalloc"]
    assert "not found: tcmalloc" in env[pt.APPLIED_ENV]
    env, t = pt.tuned_environ((), {"LD_PRELOAD": "/y.so"})
    assert env["LD_PRELOAD"] == "/y.so" and t.describe() == "nothing"


CHILD = (
    "from herd.engine.process_tuning import maybe_reexec, loaded_runtime\n"
    "maybe_reexec()\n"
    "import json, os, torch\n"
    "print(json.dumps([os.environ.get('HERD_PROCESS_TUNED'), loaded_runtime()]))\n"
)


@pytest.mark.skipif(pt.find_library("tcmalloc") is None, reason="no libtcmalloc on this machine")
def test_reexec_preloads_what_it_finds_and_the_opt_out_does_not():
    def run(**env):
        base = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HERD_PROC")}
        out = subprocess.run([sys.executable, "-c", CHILD], env={**base, **env},
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    applied, runtime = run(HERD_PROCESS_TUNING="tcmalloc")
    assert applied.startswith("tcmalloc (") and "tcmalloc allocator" in runtime
    applied, runtime = run(HERD_PROCESS_TUNING="0")
    assert applied == "nothing" and "tcmalloc" not in runtime


def test_preload_hint_for_a_process_herd_did_not_start(monkeypatch):
    monkeypatch.setattr(pt, "find_library", lambda part, extra=(): f"/opt/lib/{part}.so")
    monkeypatch.delenv(pt.APPLIED_ENV, raising=False)
    monkeypatch.delenv(pt.ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "")
    assert pt.preload_hint() == "LD_PRELOAD=/opt/lib/tcmalloc.so:/opt/lib/iomp.so"
    monkeypatch.setenv(pt.ENV, "0")  # tuning turned off: no hint
    assert pt.preload_hint() is None
    monkeypatch.delenv(pt.ENV)
    monkeypatch.setenv(pt.APPLIED_ENV, "tcmalloc")  # started tuned already
    assert pt.preload_hint() is None
