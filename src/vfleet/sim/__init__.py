"""The simulated engine: a vLLM-compatible OpenAI server whose model is a timing model."""
