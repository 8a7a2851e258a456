"""herd's gateway: one front door over many OpenAI-compatible replicas.

It speaks HTTP to its replicas only (herd's, vLLM's, SGLang's) and imports nothing of the
engine or the server. `herd.gateway.app.Gateway` is the entry point."""
