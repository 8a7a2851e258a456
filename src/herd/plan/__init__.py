"""Capacity planning: memory and GPU arithmetic from a model config and a GPU.

Pure arithmetic on config.json fields; imports nothing from the engine, server or torch,
so it can size deployments of any Llama-family model served by any engine."""

from herd.plan.gpus import GPUS, GpuSpec, resolve_gpu
from herd.plan.memory import MemoryPlan, Precision, plan_memory
from herd.plan.model_config import ModelConfig, load_model_config

__all__ = [
    "GPUS",
    "GpuSpec",
    "MemoryPlan",
    "ModelConfig",
    "Precision",
    "load_model_config",
    "plan_memory",
    "resolve_gpu",
]
