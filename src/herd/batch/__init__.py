"""OpenAI's Batch API (`/v1/files`, `/v1/batches`), shared by the replica and the gateway: the
wire shapes, the JSONL input check, the durable store (SQLite + files on disk) and the runner
that sends each line through a "send one request" callable. Imports only herd.protocol."""
