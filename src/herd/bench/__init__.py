"""herd.bench: load generator and reports for any OpenAI-compatible endpoint.

Talks HTTP only (aiohttp); never imports the engine or server. `run_benchmark` runs a config,
`reports.write_reports` writes JSON/CSV/Markdown/PNG/HTML, `compare` sets runs side by side."""
