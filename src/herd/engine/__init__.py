"""Tokens in, tokens out: scheduler, paged KV cache with prefix caching, model runner, sampler.

`LLMEngine.step()` is plain synchronous code; `LLM` (offline) and the server's `AsyncEngine`
wrap it.
"""
