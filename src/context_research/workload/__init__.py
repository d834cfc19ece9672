"""The latency experiments' workload (E1, E2; E0, E3, E4 and E5 use its checks): ``prompts`` builds the
requests, ``checks`` judges a point, ``columns`` writes its engine-side and summary columns,
``progress`` prints a line per finished point.

Every request gets a token-id prompt of exactly the target length (token ids need no
tokenizer, so the length is exact by construction) whose first tokens no other request of the
run shares, so the prefix cache can never serve a hit, whatever ``serving.enable_prefix_caching``
says. The server's ``usage.prompt_tokens`` is then checked against the target and the engine's
``vllm:prompt_tokens_by_source{source="local_cache_hit"}`` delta must stay 0: a point that
fails either check is a failed row with the reason, never a silent drift.
"""
