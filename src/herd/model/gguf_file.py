"""A GGUF file (llama.cpp's and Ollama's format) as herd reads it: where it is, its metadata as
plain Python values, and the model config its `llama.*` keys describe, in config.json's field
names so that one parser (`ModelConfig.from_dict`) serves both formats. Torch-free: `herd plan`
reads a .gguf through this module alone."""

import functools
from pathlib import Path
from typing import Any

from herd.model.errors import ModelLoadError

ARCHITECTURES = ("llama",)  # general.architecture values herd runs
TOKEN_EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
ROPE_FREQS = "rope_freqs.weight"
# general.file_type (llama_ftype): 0 all F32, 1 mostly F16, 32 mostly BF16; the rest quantized.
_FILE_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


def find_gguf(path: str | Path) -> Path | None:
    """The .gguf file `path` names: the file itself, or the one .gguf in a directory that has no
    config.json (a Hugging Face directory wins). None when `path` is not a GGUF model."""
    path = Path(path).expanduser()
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise ModelLoadError(f"{path} holds several .gguf files ({names}); name one of them")
    return files[0] if files else None


def is_gguf(path: str | Path) -> bool:
    return find_gguf(path) is not None


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime_ns: int):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError... on a broken file
        raise ModelLoadError(f"cannot read {path} as GGUF: {exc}") from None


def open_gguf(path: str | Path):
    """The `gguf.GGUFReader` of `path`, a .gguf or a directory holding one (memory-mapped;
    parsed once per process and file version)."""
    found = find_gguf(path)
    if found is None:
        raise ModelLoadError(f"{path} is not a .gguf file or a directory holding one")
    path = found.resolve()
    return _open(str(path), path.stat().st_mtime_ns)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every key-value pair of the header as Python values (arrays as lists)."""
    reader = open_gguf(path)
    return {
        key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
    }


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in PyTorch order (rows first; GGUF lists dimensions innermost first)."""
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in open_gguf(path).tensors}


def config_dict(path: str | Path) -> dict[str, Any]:
    """The model config of a GGUF file as config.json would spell it."""
    path = find_gguf(path) or path
    meta = read_metadata(path)
    shapes = tensor_shapes(path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{Path(path).name}: GGUF architecture {arch!r} is not supported (herd runs {ARCHITECTURES})"
        )
    if TOKEN_EMBEDDING not in shapes:
        raise ModelLoadError(f"{Path(path).name} has no {TOKEN_EMBEDDING} tensor")

    def key(name: str, default: Any = ...) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is ...:
            raise ModelLoadError(f"{Path(path).name}: GGUF metadata lacks {arch}.{name}")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts; herd needs them all equal
        if len(set(kv_heads)) != 1:
            raise ModelLoadError(f"{Path(path).name}: per-layer KV head counts are not supported")
        kv_heads = kv_heads[0]
    eos = [
        meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta
    ]
    return {
        "model_type": "llama",
        "vocab_size": shapes[TOKEN_EMBEDDING][0],
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(key("attention.key_length", key("rope.dimension_count", hidden // heads))),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, arch, path),
        "tie_word_embeddings": OUTPUT not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
        "torch_dtype": _FILE_DTYPES.get(meta.get("general.file_type"), "bfloat16"),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(dict.fromkeys(int(e) for e in eos)),
    }


def _rope_scaling(meta: dict, arch: str, path: str | Path) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "none" or meta.get(f"{arch}.rope.scaling.factor", 1.0) in (0.0, 1.0):
        freqs = next((t for t in open_gguf(path).tensors if t.name == ROPE_FREQS), None)
        return None if freqs is None else _llama3_scaling(meta, arch, freqs, path)
    if kind != "linear":
        raise ModelLoadError(f"{Path(path).name}: rope scaling {kind!r} is not supported")
    return {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}


def _llama3_scaling(meta: dict, arch: str, tensor, path: str | Path) -> dict:
    """Llama 3.1+ files carry the llama3 RoPE scaling only as per-frequency divisors
    (`rope_freqs`); recover the parameters from them: the largest divisor is `factor`, and
    Meta's published low/high frequency factors and original context must reproduce the rest."""
    import numpy as np

    got = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    inv_freq = theta ** -(np.arange(0, 2 * got.size, 2) / (2 * got.size))
    for original in (8192, 4096, 2048, 16384, 32768):
        params = {
            "rope_type": "llama3",
            "factor": float(got.max()),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        }
        if np.allclose(_llama3_divisors(inv_freq, params), got, rtol=1e-4):
            return params
    raise ModelLoadError(
        f"{Path(path).name}: its {ROPE_FREQS} matches no llama3 RoPE scaling herd knows"
    )


def _llama3_divisors(inv_freq, p: dict):
    """What llama.cpp's converter writes to rope_freqs for llama3 scaling parameters `p`."""
    import numpy as np

    wavelen = 2 * np.pi / inv_freq
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    orig = p["original_max_position_embeddings"]
    smooth = (orig / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / p["factor"] + smooth)
    return np.where(wavelen < orig / high, 1.0, np.where(wavelen > orig / low, p["factor"], mid))
