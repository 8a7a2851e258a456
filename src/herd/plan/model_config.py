"""Parse a Llama-family config.json (a file, a model directory or a built-in name) into the
few numbers capacity planning needs. Accepts the real fields Meta ships: optional head_dim,
rope_scaling of type llama3, tie_word_embeddings, eos_token_id as int or list, torch_dtype."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from herd.plan.builtin_models import BUILTIN_CONFIGS


class ConfigError(ValueError):
    """The model config cannot be found or lacks a field the arithmetic needs."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 0
    torch_dtype: str = "bfloat16"
    eos_token_ids: tuple[int, ...] = ()
    rope_scaling: dict = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        """Longest sequence the model supports (max_position_embeddings already includes
        the llama3 rope scaling factor in Meta's configs)."""
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict, name: str = "model") -> "ModelConfig":
        raw = raw.get("text_config", raw)  # multimodal wrappers keep the LM config inside
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            return cls(
                name=name,
                hidden_size=hidden,
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                # Older (MHA) configs omit num_key_value_heads: every head has its own KV.
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                # head_dim is optional and may be null; default is hidden / heads.
                head_dim=int(raw.get("head_dim") or hidden // heads),
                intermediate_size=int(raw["intermediate_size"]),
                vocab_size=int(raw["vocab_size"]),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings") or 0),
                torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
                eos_token_ids=_as_ids(raw.get("eos_token_id")),
                rope_scaling=dict(raw.get("rope_scaling") or {}),
            )
        except KeyError as exc:
            raise ConfigError(f"{name}: config.json lacks field {exc.args[0]!r}") from None

    def param_counts(self) -> dict[str, int]:
        """Parameters by kind: the kinds matter because quantization leaves some in bf16."""
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size
        return {
            "attn_qo": self.num_layers * (q + o),
            "attn_kv": self.num_layers * kv,
            "mlp": self.num_layers * mlp,
            "embed": embed,
            "lm_head": 0 if self.tie_word_embeddings else embed,
            "norm": (2 * self.num_layers + 1) * self.hidden_size,
        }

    @property
    def num_params(self) -> int:
        return sum(self.param_counts().values())


def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def _normalise(name: str) -> str:
    name = name.rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-hf"):
        name = name.removesuffix(suffix)
    return name


def _gguf_config(path: Path) -> dict | None:
    """config.json's fields from a .gguf file (or a directory holding one), else None."""
    from herd.model.errors import ModelLoadError
    from herd.model.gguf_file import config_dict, find_gguf

    try:
        found = find_gguf(path)
        return None if found is None else config_dict(found)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None


def builtin_names() -> list[str]:
    return list(BUILTIN_CONFIGS)


def load_model_config(spec: str) -> ModelConfig:
    """`spec` is a config.json path, a directory holding one, a .gguf file (or a directory
    holding one), or a built-in name such as
    llama-3.1-8b or meta-llama/Llama-3.3-70B-Instruct."""
    path = Path(spec).expanduser()
    gguf = _gguf_config(path)
    if gguf is not None:
        return ModelConfig.from_dict(gguf, name=path.name.removesuffix(".gguf"))
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        return ModelConfig.from_dict(raw, name=path.parent.name or str(path))
    for name, raw in BUILTIN_CONFIGS.items():
        if _normalise(name) == _normalise(spec):
            return ModelConfig.from_dict(raw, name=name)
    known = ", ".join(builtin_names())
    raise ConfigError(
        f"unknown model {spec!r}: give a config.json, a model directory or one of {known}"
    )
