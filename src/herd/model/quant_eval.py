"""How much quantization changes a model, measured teacher-forced on a fixed text that ships with
Python (stdlib module docstrings): top-1 agreement with a reference model and perplexity. Used by
the quality tests and benchmarks/bench_quant.py; no engine, one sequence, plain causal SDPA."""

import math

import torch
import torch.nn.functional as F

# Docstrings of these stdlib modules, joined: English prose with some code, identical for every
# run of one Python version.
TEXT_MODULES = ("argparse", "textwrap", "difflib", "inspect", "json", "csv", "heapq", "bisect")


def fixed_text() -> str:
    import importlib

    docs = [importlib.import_module(name).__doc__ or "" for name in TEXT_MODULES]
    return "\n\n".join(d.strip() for d in docs)


def _causal(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    )
    return out.transpose(0, 1)


@torch.inference_mode()
def next_token_logits(model, ids: list[int], chunk: int = 512) -> torch.Tensor:
    """float32 logits [len(ids), vocab] predicting each next token. The text is cut into
    independent windows of `chunk` tokens (each starts fresh), which keeps attention cheap."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), chunk):
        window = torch.tensor(ids[start : start + chunk], device=device)
        positions = torch.arange(len(window), device=device)
        out.append(model.compute_logits(model(window, positions, _causal)))
    return torch.cat(out)


def top1_agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()


def perplexity(logits: torch.Tensor, ids: list[int], chunk: int = 512) -> float:
    """Perplexity of `ids` under `logits` from `next_token_logits` (the last position of each
    window predicts nothing inside it and is skipped)."""
    target = torch.tensor(ids, device=logits.device)
    keep = torch.ones(len(ids), dtype=torch.bool, device=logits.device)
    keep[chunk - 1 :: chunk] = False
    keep[-1] = False
    nll = F.cross_entropy(logits[keep][:], target.roll(-1)[keep], reduction="mean")
    return math.exp(nll.item())
