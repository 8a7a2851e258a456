"""Errors of the model layer. They live here, not in `herd.engine`, so that `herd.model` never
imports the layer above it; `herd.engine.errors` re-exports them."""


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded: missing files, a malformed config, unsupported or
    mismatched weights. The message names the file or field at fault."""
