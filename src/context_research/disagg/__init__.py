"""Prefill/decode disaggregation on real vLLM engines (E3).

- ``connectors``: ``--kv-transfer-config`` JSON for ExampleConnector / NixlConnector /
  P2pNcclConnector, the per-run shared KV folder, and a check against the installed vLLM;
- ``gpus``: which GPUs the prefill and decode engines see (NVML discovery, config overrides);
- ``broker``: one id per KV handoff, bytes actually moved, and the analytical cross-check;
- ``schedulers``: ``AggregatedScheduler`` (one pool) and ``DisaggregatedScheduler`` (a prefill
  pool and a decode pool), both writing a JSONL route log;
- ``plan``: the sweep points, the token budget, which points a mode refuses, and the prompts;
- ``phases``: the three engines' settings and the two phases (aggregated, then disaggregated);
- ``rows``: the per-point, per-request and per-handoff rows (column lists, deltas, byte agreement);
- ``summary``: ``summary.json`` and the run's result summary.
"""
