"""vfleet: a production serving stack for vLLM."""

__version__ = "0.1.0"
