"""One replica: the engine behind an OpenAI-compatible HTTP API (aiohttp), with streaming,
/health, /ready, /metrics, bounded admission and drain on SIGTERM.

Importing this package starts nothing; `herd.server.app.create_app` builds the application."""
