"""context-research: reproducible long-context serving baselines on the real vLLM engine."""

__version__ = "0.1.0"
