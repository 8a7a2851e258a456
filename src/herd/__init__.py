"""herd: serve Llama-family models with high availability, and measure any OpenAI-compatible service.

The offline engine API (`LLM`, `SamplingParams`) is imported lazily so that the HTTP-only layers
(gateway, bench, plan) never pay for importing torch.
"""

from typing import Any

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from herd.engine.llm import LLM

        return LLM
    if name in ("SamplingParams",):
        from herd.engine.sampling_params import SamplingParams

        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from herd.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'herd' has no attribute {name!r}")
