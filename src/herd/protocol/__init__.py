"""The OpenAI wire format, written once: request and response models, the prompt grammar, SSE
framing, error bodies and Prometheus text parsing. Used by server, gateway and bench alike;
imports nothing else of herd."""
