"""Shared fixtures: tiny random-weight Llama models written with transformers."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Engines (and the replicas tests start) run eagerly unless a test asks for compiling: a compile
# costs seconds per batch bucket, and tests/engine/test_compiled.py checks the compiled path.
os.environ.setdefault("HERD_ENFORCE_EAGER", "1")
# Without a GPU, Triton kernels (TritonAttention's) run under Triton's interpreter. Triton reads
# this when it is first imported, which may be inside any test, so it is set before all of them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (GQA, 2 layers, hidden 64, vocab 512), float32 weights."""
    from herd.model.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("tiny-llama"))
