"""The model a plan sizes: a config.json path, a model directory, a .gguf file or a built-in name,
read by herd's one torch-free `ModelConfig` reader (herd.model.config)."""

from pathlib import Path

from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.plan.builtin_models import BUILTIN_CONFIGS

__all__ = ["ConfigError", "ModelConfig", "builtin_names", "load_model_config"]


class ConfigError(ValueError):
    """The model config cannot be found or lacks a field the arithmetic needs."""


def _normalise(name: str) -> str:
    name = name.rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-hf"):
        name = name.removesuffix(suffix)
    return name


def builtin_names() -> list[str]:
    return list(BUILTIN_CONFIGS)


def load_model_config(spec: str) -> ModelConfig:
    """`spec` is a config.json path, a directory holding one, a .gguf file, or a built-in name
    such as llama-3.1-8b or meta-llama/Llama-3.3-70B-Instruct."""
    try:
        if Path(spec).expanduser().exists():
            return ModelConfig.from_path(spec)
        for name, raw in BUILTIN_CONFIGS.items():
            if _normalise(name) == _normalise(spec):
                return ModelConfig.from_dict(raw, name=name)
    except ModelLoadError as exc:
        raise ConfigError(f"{spec}: {exc}") from None
    known = ", ".join(builtin_names())
    raise ConfigError(
        f"unknown model {spec!r}: give a config.json, a model directory, a .gguf file or one of "
        f"{known}"
    )
