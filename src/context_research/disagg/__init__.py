"""Prefill/decode disaggregation on real vLLM engines (E3).

- ``connectors``: ``--kv-transfer-config`` JSON for ExampleConnector / NixlConnector /
  P2pNcclConnector, the per-run shared KV folder, and a check against the installed vLLM;
- ``gpus``: which GPUs the prefill and decode engines see (NVML discovery, config overrides);
- ``broker``: one id per KV handoff, bytes actually moved, and the analytical cross-check;
- ``schedulers``: ``AggregatedScheduler`` (one pool) and ``DisaggregatedScheduler`` (a prefill
  pool and a decode pool), both writing a JSONL route log.
"""
