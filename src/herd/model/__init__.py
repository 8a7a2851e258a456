"""The Llama model herd runs: configuration, layers, weight loading, and a demo-model writer."""
