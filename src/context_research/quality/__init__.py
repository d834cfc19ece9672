"""Answer scoring and prompt helpers for the E4 long-context quality experiment."""
