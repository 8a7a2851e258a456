"""`ModelConfig`: the Llama architecture settings herd needs, for the engine and `herd plan`
alike, read by one entry point (`ModelConfig.from_path`) from a model directory, a config.json,
or a .gguf file. It understands config.json as Meta ships it (rope_scaling of type llama3, head_dim
optional), as transformers 5 writes it (`rope_parameters`, `dtype`), multimodal wrappers
(`text_config`) and the EOS ids of generation_config.json. Torch-free: plan imports it."""

import json
from dataclasses import dataclass
from pathlib import Path

from herd.model.errors import ModelLoadError
from herd.model.gguf_file import config_dict as gguf_config_dict
from herd.model.gguf_file import find_gguf

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


@dataclass
class RopeConfig:
    """Rotary position embedding settings: base (theta) and the scaling that long-context Llamas
    use (llama3 or linear) with its factors."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0  # llama3 / linear
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3


@dataclass
class ModelConfig:
    """The Llama architecture as herd needs it, read without torch from a config.json (Meta's or
    transformers 5's format, `text_config` wrappers, generation_config EOS ids) or a GGUF file's
    metadata. The one config for the engine and `herd plan`; reading raises `ModelLoadError`
    naming what is wrong."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    torch_dtype: str
    eos_token_ids: list[int]
    bos_token_id: int | None
    is_demo: bool = False
    name: str = ""  # the model's directory or file name, or plan's built-in name

    @property
    def max_model_len(self) -> int:
        return self.max_position_embeddings

    def param_counts(self) -> dict[str, int]:
        """Parameters by kind: the kinds matter because quantization leaves some in bf16."""
        q = self.hidden_size * self.num_attention_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_key_value_heads * self.head_dim
        o = self.num_attention_heads * self.head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size
        layers = self.num_hidden_layers
        return {
            "attn_qo": layers * (q + o),
            "attn_kv": layers * kv,
            "mlp": layers * mlp,
            "embed": embed,
            "lm_head": 0 if self.tie_word_embeddings else embed,
            "norm": (2 * layers + 1) * self.hidden_size,
        }

    @property
    def num_params(self) -> int:
        return sum(self.param_counts().values())

    # ---- tensor parallelism: how heads split over `tp` ranks (the engine and plan agree) ----

    def check_tensor_parallel(self, tp: int) -> None:
        """A `ValueError` unless `tp` ranks can split this model: tp divides the attention heads,
        and the KV heads divide tp or tp divides them (fewer KV heads than ranks: replicated)."""
        if tp < 1 or self.num_attention_heads % tp:
            raise ValueError(f"tp={tp} must divide the {self.num_attention_heads} attention heads")
        if self.num_key_value_heads % tp and tp % self.num_key_value_heads:
            raise ValueError(
                f"tp={tp} and {self.num_key_value_heads} KV heads: one must divide the other"
            )

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads one rank holds: fewer KV heads than ranks leaves each rank one replica."""
        return max(1, self.num_key_value_heads // tp)

    @classmethod
    def from_dict(cls, raw: dict, name: str = "") -> "ModelConfig":
        """From config.json's fields (a multimodal wrapper's `text_config` is the model)."""
        try:
            return _parse(_language_model(raw), name)
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing required field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"config.json is malformed: {exc}") from None

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelConfig":
        """The one entry point: a Hugging Face model directory, its config.json, a .gguf file,
        or a directory holding one .gguf. A `ModelLoadError` names what is wrong."""
        gguf = find_gguf(path)  # a .gguf file, or a directory holding one
        if gguf is not None:
            return cls.from_dict(gguf_config_dict(gguf), name=gguf.stem)
        path = Path(path).expanduser()
        if path.is_file() and path.suffix == ".json":
            path, model_dir = path, path.parent
        elif path.is_dir():
            path, model_dir = path / "config.json", path
        else:
            raise ModelLoadError(f"model directory {str(path)!r} does not exist")
        if not path.is_file():
            raise ModelLoadError(f"{model_dir} has no config.json (is it a Hugging Face model?)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path} must hold a JSON object")
        gen = model_dir / "generation_config.json"
        if gen.is_file():
            try:
                gen_eos = json.loads(gen.read_text()).get("eos_token_id")
            except (json.JSONDecodeError, AttributeError):
                gen_eos = None
            if gen_eos is not None:  # generation_config's eos ids win, as in transformers
                raw = {**_language_model(raw), "eos_token_id": gen_eos}
        return cls.from_dict(raw, name=model_dir.resolve().name)

    from_dir = from_path  # the name the engine used before GGUF files and config.json paths


def _language_model(raw: dict) -> dict:
    """A multimodal wrapper's language model is its `text_config`; the wrapper's dtype applies
    where the text config names none."""
    text = raw.get("text_config")
    if not isinstance(text, dict):
        return raw
    return {**{k: raw[k] for k in ("torch_dtype", "dtype") if k in raw}, **text}


def _parse(raw: dict, name: str) -> ModelConfig:
    model_type = raw.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"model_type {model_type!r} is not supported (herd runs 'llama')")
    heads = int(raw["num_attention_heads"])
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    hidden = int(raw["hidden_size"])
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads {heads} is not a multiple of kv heads {kv_heads}")
    eos = raw.get("eos_token_id")
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    dtype = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    return ModelConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope=_parse_rope(raw),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        torch_dtype=str(dtype),
        eos_token_ids=eos_ids,
        bos_token_id=raw.get("bos_token_id"),
        is_demo=bool(raw.get("herd_demo", False)),
        name=name,
    )


def _parse_rope(raw: dict) -> RopeConfig:
    # Meta / transformers<5: rope_theta + rope_scaling; transformers>=5: rope_parameters.
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    params.update(scaling)
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported ({SUPPORTED_ROPE_TYPES})")
    rope = RopeConfig(theta=theta, rope_type=rope_type)
    if rope_type in ("llama3", "linear"):
        rope.factor = float(params["factor"])
    if rope_type == "llama3":
        rope.low_freq_factor = float(params.get("low_freq_factor", 1.0))
        rope.high_freq_factor = float(params.get("high_freq_factor", 4.0))
        rope.original_max_position_embeddings = int(
            params.get("original_max_position_embeddings", 8192)
        )
    return rope
