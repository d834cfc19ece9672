"""E4 long-context quality: answer scoring, prompt fitting, perplexity from prompt logprobs, and quality rows and verdicts."""
