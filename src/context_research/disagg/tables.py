"""E3's result tables, column by column: unit, source, meaning and, for the columns its report
shows, a label (``docs/columns.md``). ``experiments/e3.py`` declares them (``tables=``); they live
here, below the experiments, so that ``disagg.rows`` takes its column order from them without
importing the experiment.
"""

from __future__ import annotations

from ..analysis.latency import STAT_SUFFIXES
from ..columns import Column, Table
from ..result_tables import (METRIC_LABEL, STAT_MEANING, TPOT_MEANING, goodput_columns, integrity_columns,
                             latency_stat_columns, measured_on_column, per_request_engine_columns,
                             request_record_columns, stamp_columns, status_columns)

C = Column

_E3_TTFT = "disaggregated rows: producer send to the consumer's first token"
_DELTA = ("ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "e2e_ms_p50", "e2e_ms_p95", "goodput_rps")
_DELTA_UNIT = {"goodput_rps": "req/s"}


def _delta_label(metric: str) -> str:
    name, _, stat = metric.partition("_ms_")
    return f"{METRIC_LABEL[name]} {stat}" if stat else "goodput"


_STAND_IN = "a stand-in, not a timing"

E3_MODE_COMPARISON = Table("e3/mode_comparison.csv", (
    C("prompt_tokens", "tokens", "config", "the point's prompt length", "prompt tokens"),
    C("concurrency", "count", "config", "requests in flight at most", "concurrency"),
    C("mode", "", "config", "aggregated (one engine) or disaggregated (prefill producer + decode consumer joined by a "
                            "KV connector)", "mode"),
    C("kv_path", "", "config", "disaggregated rows: the way the KV moved (experiments.e3.kv_paths name; without "
                               "kv_paths the connector's name); each way has its own engine pair; empty for "
                               "aggregated rows", "KV path"),
    *status_columns("row"),
    C("max_tokens", "tokens", "config", "output tokens per request"),
    C("gpus_used", "count", "config", "GPUs the mode's engines are pinned to (union of CUDA_VISIBLE_DEVICES); 0 on "
                                      "CPU; 1 when both engines share a GPU"),
    *latency_stat_columns(
        ttft_note=_E3_TTFT,
        **{f"tpot_ms_{s}": f"{STAT_MEANING[s]} of the successful requests' TPOT (disaggregated rows: the consumer's)"
           for s in STAT_SUFFIXES},
        **{f"itl_ms_{s}": f"{STAT_MEANING[s]} of the inter-chunk gaps pooled over every request (disaggregated rows: "
                          f"the consumer's stream)"
           for s in STAT_SUFFIXES},
        **{f"e2e_ms_{s}": f"{STAT_MEANING[s]} of the successful requests' E2E ({_E3_TTFT.replace('first', 'last')})"
           for s in STAT_SUFFIXES}),
    *goodput_columns(("duration_s", "request_throughput_rps", "output_throughput_tok_s", "ttft_slo_ms", "tpot_slo_ms",
                      "n_slo_met", "slo_attainment", "goodput_rps")),
    C("goodput_rps_per_gpu", "req/s", "derived", "goodput_rps / gpus_used; empty on CPU", "goodput per GPU"),
    C("engine_ttft_ms_mean", "ms", "engine", "mean vLLM TTFT histogram delta: aggregated rows the one engine's; "
                                             "disaggregated rows the DECODE engine's only (KV load + first token, no "
                                             "producer prefill)"),
    C("connector", "", "config", "vLLM KV connector of the way's engines (its kv_paths entry, else "
                                 "experiments.e3.connector)", "connector"),
    C("kv_transfer_direction", "", "label", "how the KV crosses: read (the consumer pulls it: NixlConnector = "
                                            "NixlPullConnector), write (the producer pushes it: NixlPushConnector) or "
                                            "files (ExampleConnector: stored, then loaded)", "direction"),
    C("ucx_env", "", "config", "UCX variables set on the way's NIXL engines (K=V;K=V), e.g. "
                               "UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y; empty when none", "UCX env"),
    C("kv_transport", "", "engine", "the UCX transport(s) of the GPU-to-GPU transfer, from UCX_PROTO_INFO in the log "
                                    "of the engine that issues it (read: decode; write: prefill), e.g. cuda_ipc/cuda "
                                    "or tcp/lo; empty when UCX printed none (ExampleConnector, CPU)", "transport"),
    C("kv_transport_slow", "bool", "derived", "the transport is slower than the host allows (TCP or emulation where "
                                              "CUDA IPC or NVLink could carry GPU memory): flagged, not failed",
      "transport slow"),
    C("block_size", "tokens", "engine", "KV block size: experiments.e3.block_size, else the decode engine's "
                                        "cache_config_info"),
    C("kv_dtype", "", "engine", "KV dtype served: cache_config_info.cache_dtype, else the model dtype in the engine "
                                "log, else config.json"),
    C("kv_bytes_per_token", "bytes/token", "analytical", "2 x layers x kv_heads x head_dim x kv_dtype bytes "
                                                         "(config.json)"),
    C("stored_tokens", "tokens", "analytical", "tokens the connector is EXPECTED to store for this prompt length "
                                               "(ExampleConnector: ((n-1)//block)*block; others: n); not measured"),
    C("handoffs", "count", "client", "KV handoffs the broker opened for the point"),
    C("handoffs_ok", "count", "client", "handoffs whose consumer request succeeded"),
    C("handoffs_kv_moved", "count", "derived", "handoffs whose KV moved (transfers.csv kv_moved)"),
    C("transfer_bytes_per_request", "bytes", "files", "mean size of the connector's files per ok handoff (headers "
                                                      "included); empty for connectors without a folder (NIXL, P2P "
                                                      "NCCL)", "KV moved per request"),
    C("transfer_bytes_total", "bytes", "files", "sum of the connector's file sizes over the point's ok handoffs"),
    C("kv_bytes_loaded_per_request", "bytes", "derived", "mean over ok handoffs of the consumer's loaded tokens x its "
                                                         "KV-cache bytes per token: derived from a token count, not a "
                                                         "byte count, so never a byte check"),
    C("analytical_bytes_per_request", "bytes", "analytical", "mean over ok handoffs of kv_bytes_per_token x expected "
                                                             "stored tokens", "analytical per request"),
    C("analytical_bytes_total", "bytes", "analytical", "sum over ok handoffs of kv_bytes_per_token x expected stored "
                                                       "tokens (NIXL: every block the prompt touches)"),
    C("bytes_source", "", "label", "what bytes_agree compared with the analytical count: files (the connector's "
                                   "folder, per handoff) or NIXL's engine counter vllm:nixl_bytes_transferred over the "
                                   "point (and which engine's); empty when nothing counted the bytes"),
    C("bytes_relative_error_max", "ratio", "derived", "signed (measured - analytical) / analytical: files: the handoff "
                                                      "with the largest magnitude; NIXL: the point's sum"),
    C("bytes_agree", "bool", "derived", "measured bytes within experiments.e3.bytes_tolerance of analytical (files: "
                                        "every ok handoff; NIXL: the point's counter); false fails the row; empty when "
                                        "nothing counted the bytes (kv_bytes_check says so)", "bytes agree"),
    C("kv_bytes_check", "", "label", "the point's byte check in words: what was compared and the result, or 'could "
                                     "not check' and why (disagg.verdict.point_bytes_check)"),
    C("baseline_prefill_ms_p50", "ms", "client", "median E2E of isolated max_tokens=1 non-streamed prefills of this "
                                                 "length on the AGGREGATED engine (what the prefill costs alone)"),
    C("producer_e2e_ms_p50", "ms", "client", "median E2E of the producer requests (max_tokens=1, non-streamed, KV "
                                             "written by the connector)"),
    C("consumer_ttft_ms_p50", "ms", "client", "median TTFT of the consumer requests from their own send"),
    C("kv_save_ms_p50", "ms", "derived", "median over handoffs of kv_save_ms: each request's token share of the "
                                         "producer steps' save time (transfers.csv)", "KV save p50"),
    C("kv_save_step_ms_p50", "ms", "engine", "median over handoffs of kv_save_step_ms: the whole time of the producer "
                                             "steps that saved the request, shared with the others they saved"),
    C("kv_load_ms_p50", "ms", "derived", "median over handoffs of kv_load_ms: synchronous loads, each request's "
                                         "token share of the loading step; asynchronous loads, its own interval from "
                                         "the transfer requested to its receive done", "KV load p50"),
    C("kv_load_step_ms_p50", "ms", "engine", "median over handoffs of kv_load_step_ms: time inside the connector's "
                                             "load calls of the steps that loaded (or requested) the request"),
    C("kv_step_requests_max", "count", "engine", "the most requests one engine step saved or loaded together in "
                                                 "this point (1: no step was shared, share = step)",
      "requests per step (max)"),
    C("kv_wait_ms_p50", "ms", "engine", "median over handoffs of the consumer's first KV lookup to its first "
                                        "scheduling", "KV wait p50"),
    C("kv_stall_ms_p50", "ms", "engine", "median over handoffs of the consumer's first KV lookup to KV in place"),
    C("kv_stall_ratio_p50", "ratio", "derived", "median of kv_stall_ms / consumer_engine_ms (the decode side's wait "
                                                "for KV over its request time, both engine-timed)", "stall ratio"),
    C("kv_load_gb_s_derived_p50", "GB/s", "derived", "median of kv_bytes_loaded / kv_load_ms (1 GB = 1e9 bytes)",
      "derived KV load rate"),
    C("link_ceiling_gb_s", "GB/s", "client", "what the KV's link can carry: a torch copy between the prefill and "
                                             "decode GPUs (device copy on one GPU), timed by our driver before any "
                                             "engine started; empty on CPU"),
    C("kv_load_share_of_ceiling", "ratio", "derived", "kv_load_gb_s_derived_p50 / link_ceiling_gb_s",
      "load / link ceiling"),
    C("kv_timing_source", "", "label", "who timed the kv_* columns (the measuring connector and the connector it "
                                       "wraps), or why they were not measured"),
    C("consumer_expected_kv_tokens", "tokens", "analytical", "sum over ok handoffs of the tokens the consumer should "
                                                             "load (ExampleConnector: ((n-2)//block)*block; NIXL: n)"),
    C("external_kv_tokens", "tokens", "engine", "sum over ok handoffs of the tokens the consumer's connector loaded "
                                                "(measuring connector, per request)"),
    C("consumer_external_kv_tokens", "tokens", "engine",
      "Δ decode engine's vllm:prompt_tokens_by_source_total{source=external_kv_transfer} over the point"),
    C("consumer_local_compute_tokens", "tokens", "engine",
      "Δ decode engine's vllm:prompt_tokens_by_source_total{source=local_compute} over the point"),
    C("kv_moved", "bool", "derived", "every handoff moved its KV (expected tokens loaded; files' bytes agree), the "
                                     "engine's external_kv_transfer count equals consumer_expected_kv_tokens and the "
                                     "point's bytes do not disagree; false fails the row (disagg.verdict)", "KV moved"),
    C("nixl_bytes_transferred", "bytes", "engine", "Δ vllm:nixl_bytes_transferred sum over the point on the engine "
                                                   "that issues the transfers (nixl_counter_engine; NIXL's own "
                                                   "telemetry); empty for other connectors"),
    C("nixl_transfers", "count", "engine", "Δ vllm:nixl_bytes_transferred count over the point"),
    C("nixl_xfer_ms_mean", "ms", "engine", "mean of vllm:nixl_xfer_time_seconds over the point (Δsum / Δcount)"),
    C("nixl_failed_transfers", "count", "engine", "Δ vllm:nixl_num_failed_transfers over the point"),
    C("nixl_counter_engine", "", "label", "whose NIXL telemetry the nixl_* columns read: decode for reads (pull), "
                                          "prefill for writes (push), as vLLM 0.26.0 records a transfer where it is "
                                          "issued"),
    C("nixl_gb_s", "GB/s", "derived", "nixl_bytes_transferred / (nixl_transfers x nixl_xfer_ms_mean): NIXL's own "
                                      "transfer rate, post to done (1 GB = 1e9 bytes)", "NIXL rate"),
    *(C(f"delta_{m}", _DELTA_UNIT.get(m, "ms"), "derived",
        f"disaggregated {m} - aggregated {m} at the same point (ok disaggregated rows only)", f"Δ {_delta_label(m)}")
      for m in _DELTA),
    *integrity_columns(),
    measured_on_column("client; kv_* columns: engine (measuring connector); consumer_* and engine_* and "
                       "nixl_* columns: engine /metrics; bytes: shared folder or NIXL's counter"),
    *stamp_columns(),
), "one row per point (prompt length, concurrency) and mode", retired=(
    ("store_ms_p50", f"producer E2E minus another engine's prefill: {_STAND_IN}; see kv_save_ms_p50"),
    ("load_ms_p50", f"the consumer's TTFT: {_STAND_IN}; see kv_load_ms_p50 and consumer_ttft_ms_p50"),
    ("transfer_ms_p50", f"store + load stand-ins; see kv_save_ms_p50, kv_wait_ms_p50, kv_load_ms_p50"),
    ("transfer_ms_mean", "store + load stand-ins"),
    ("transfer_throughput_mb_s", "bytes over the stand-ins (compute included); see kv_load_gb_s_derived_p50"),
    ("stall_ratio_p50", "consumer TTFT / E2E, which max_tokens decides; see kv_stall_ratio_p50"),
    ("stall_ratio_mean", "as stall_ratio_p50"),
    ("consumer_loaded_all", "external tokens >= expected; see kv_moved (equality, per request and per point)"),
    ("nixl_bytes_over_loaded", "NIXL's bytes over tokens x bytes per token; see bytes_relative_error_max (NIXL's "
                               "counter against the analytical count, part of the verdict)"),
))

E3_REQUESTS = Table("e3/requests.csv", (
    C("mode", "", "config", "aggregated or disaggregated"),
    C("kv_path", "", "config", "disaggregated requests: the way the KV moved (mode_comparison.csv kv_path)"),
    C("label", "", "label", "warmup or measured"),
    C("point_prompt_tokens", "tokens", "config", "prompt length of the request's point; empty for warmup"),
    C("concurrency", "count", "config", "concurrency of the request's point; empty for warmup"),
    *request_record_columns(
        start_s="send time relative to the start of the point's batch (disaggregated: the producer send)",
        ttft_s=f"time to first token, client ({_E3_TTFT}; aggregated: send to first streamed chunk)",
        e2e_s="send to the last streamed chunk (disaggregated: producer send to the consumer's last chunk)",
        tpot_s=TPOT_MEANING + " (disaggregated: the consumer's own)",
        first_chunk_tokens="tokens the first token-carrying chunk brought (cumulative usage); disaggregated rows: "
                           "the consumer's stream",
        opening_burst_tokens="tokens of the stream's opening burst (records.finalize_timing); disaggregated rows: "
                             "the consumer's stream",
        **{name: f"{col.meaning}; disaggregated rows: the consumer engine's"
           for name, col in ((c.name, c) for c in per_request_engine_columns())},
        itl_s="comma-separated gaps between successive streamed chunks (disaggregated: the consumer's stream)",
        prompt_tokens="prompt tokens the server counted (disaggregated: the consumer's usage block)"),
    C("handoff_id", "", "label", "the KV handoff of a disaggregated request (transfers.csv); empty otherwise"),
    C("producer_e2e_s", "s", "client", "the producer request's E2E (max_tokens=1, non-streamed)"),
    C("consumer_ttft_s", "s", "client", "the consumer request's own TTFT, from its send"),
    C("kv_wait_ms", "ms", "engine", "the consumer's first KV lookup to its first scheduling (transfers.csv)"),
    C("kv_load_ms", "ms", "derived", "the consumer's KV load: its share of a synchronous loading step, or its own "
                                     "asynchronous interval (transfers.csv)"),
    C("external_kv_tokens", "tokens", "engine", "tokens the consumer's connector loaded for the request"),
    *stamp_columns(),
), "one row per request of both modes")

E3_TRANSFERS = Table("e3/transfers.csv", (
    C("handoff_id", "", "label", "handoff id"),
    C("request_id", "", "label", "the request it carried (requests.csv)"),
    C("prompt_tokens", "tokens", "client", "tokens of the prompt the broker sent"),
    C("connector", "", "config", "vLLM KV connector"),
    C("kv_path", "", "config", "the way the KV moved (mode_comparison.csv kv_path)"),
    C("label", "", "label", "warmup or measured"),
    C("concurrency", "count", "config", "concurrency of the handoff's point; empty for warmup"),
    C("storage_key", "", "label", "ExampleConnector's folder name for the prompt (md5 of the stored token ids)"),
    C("stored_tokens_expected", "tokens", "analytical", "tokens the connector should store (ExampleConnector: "
                                                        "((n-1)//block)*block; others: n)"),
    C("expected_external_kv_tokens", "tokens", "analytical", "tokens the consumer should load instead of computing "
                                                             "(ExampleConnector: ((n-2)//block)*block; NIXL: n)"),
    C("analytical_bytes", "bytes", "analytical", "kv_bytes_per_token x stored_tokens_expected"),
    C("bytes_moved", "bytes", "files", "total size of the connector's files for the prompt (headers included), read "
                                       "after the point's requests completed"),
    C("payload_bytes", "bytes", "files", "tensor bytes inside those files (safetensors headers' data offsets)"),
    C("header_bytes", "bytes", "files", "bytes_moved - payload_bytes"),
    C("files", "count", "files", "files in the prompt's folder (one per attention layer)"),
    C("stored_dtypes", "", "files", "comma-separated dtypes of the stored tensors"),
    C("stored_tokens_measured", "tokens", "files", "comma-separated token dimensions of the stored tensors"),
    C("producer_e2e_s", "s", "client", "producer request E2E (max_tokens=1, non-streamed, KV written)"),
    C("baseline_prefill_s", "s", "client", "median E2E of isolated max_tokens=1 prefills of this length on the "
                                           "aggregated engine (the same for every handoff of a length)"),
    C("consumer_ttft_s", "s", "client", "consumer request TTFT from its own send"),
    C("consumer_e2e_s", "s", "client", "consumer request E2E from its own send"),
    C("ok", "bool", "label", "the consumer request succeeded"),
    C("error", "", "label", "which pool failed and why"),
    C("kv_transfer_direction", "", "label", "read (the consumer pulls), write (the producer pushes) or files"),
    C("kv_save_ms", "ms", "derived", "producer: the request's share of kv_save_step_ms, each step's time x the "
                                     "request's tokens in it / all tokens it saved (ledger.share)"),
    C("kv_save_step_ms", "ms", "engine", "producer: time inside the connector's save_kv_layer calls and "
                                         "wait_for_save, summed over the steps that computed the prompt: the steps' "
                                         "whole time, shared with every request they saved"),
    C("kv_save_step_requests", "count", "engine", "producer: the most requests one of those steps saved"),
    C("kv_save_window_ms", "ms", "engine", "producer: first layer saved to wait_for_save done, summed over those "
                                           "steps (the layers' compute in between included; the steps', not shared)"),
    C("kv_load_ms", "ms", "derived", "consumer: synchronous loads, the request's share of kv_load_step_ms by its "
                                     "loaded tokens (ledger.share); asynchronous loads (kv_load_async), its own "
                                     "interval from the transfer requested (pull: READ issued; push: registration "
                                     "sent) to its receive reported done"),
    C("kv_load_step_ms", "ms", "engine", "consumer: time inside start_load_kv and wait_for_layer_load of the steps "
                                         "that loaded (or, asynchronously, requested) the request, shared with every "
                                         "request they loaded"),
    C("kv_load_step_requests", "count", "engine", "consumer: the most requests one of those steps loaded"),
    C("kv_load_async", "bool", "engine", "the connector loads asynchronously, between engine steps (NIXL)"),
    C("kv_wait_ms", "ms", "engine", "consumer: first KV lookup by the scheduler to the step in which the request "
                                    "was first scheduled to compute"),
    C("kv_stall_ms", "ms", "engine", "consumer: first KV lookup to the KV in place (load end or receive done)"),
    C("consumer_engine_ms", "ms", "engine", "consumer: first KV lookup to the request's end in the scheduler"),
    C("kv_stall_ratio", "ratio", "derived", "kv_stall_ms / consumer_engine_ms"),
    C("producer_engine_ms", "ms", "engine", "producer: first KV lookup to the request's end in the scheduler"),
    C("external_kv_tokens", "tokens", "engine", "tokens the consumer's connector loaded (allocated as external)"),
    C("kv_bytes_loaded", "bytes", "derived", "external_kv_tokens x bytes per token of the consumer's registered KV "
                                             "cache tensors: derived from a token count, not a byte count"),
    C("kv_send_done_ms", "ms", "engine", "producer: request end to its KV reported sent (asynchronous connectors; "
                                         "empty otherwise)"),
    C("kv_timing_source", "", "label", "who timed the kv_* columns, or what the ledger lacked"),
    C("kv_load_gb_s_derived", "GB/s", "derived", "kv_bytes_loaded / kv_load_ms (1 GB = 1e9 bytes)"),
    C("bytes_source", "", "label", "bytes this handoff's check compares: files; for NIXL 'per point' (its byte "
                                   "counter is checked in mode_comparison.csv); else not measured"),
    C("bytes_relative_error", "ratio", "derived", "(measured bytes - analytical_bytes) / analytical_bytes"),
    C("bytes_agree", "bool", "derived", "|bytes_relative_error| <= experiments.e3.bytes_tolerance; empty when this "
                                        "handoff's bytes were not measured (NIXL: checked per point)"),
    C("kv_moved", "bool", "derived", "consumer ok, the files' bytes agree (connectors with files) and "
                                     "external_kv_tokens == expected_external_kv_tokens (disagg.verdict)"),
    C("kv_check", "", "label", "why kv_moved is what it is"),
    C("waterfall_producer_frontend_ms", "ms", "derived", "producer send (client) to its first KV lookup (engine)"),
    C("waterfall_producer_engine_ms", "ms", "engine", "producer's first KV lookup to its end (queue, prefill, save)"),
    C("waterfall_producer_reply_ms", "ms", "derived", "producer's end (engine) to its reply received (client)"),
    C("waterfall_broker_ms", "ms", "client", "producer reply received to consumer send"),
    C("waterfall_consumer_frontend_ms", "ms", "derived", "consumer send (client) to its first KV lookup (engine)"),
    C("waterfall_kv_wait_load_ms", "ms", "engine", "consumer's first KV lookup to the KV in place"),
    C("waterfall_first_token_ms", "ms", "derived", "KV in place (engine) to the consumer's first token (client)"),
    *stamp_columns(),
), "one row per KV handoff (warmups included)", retired=(
    ("lookup_tokens_expected", "renamed expected_external_kv_tokens (defined for NIXL too)"),
    ("store_s", f"producer E2E minus another engine's prefill: {_STAND_IN}; see kv_save_ms"),
    ("load_s", f"the consumer's TTFT: {_STAND_IN}; see kv_load_ms"),
    ("transfer_s", "store_s + load_s"),
    ("throughput_bytes_per_s", "bytes over the stand-ins; see kv_load_gb_s_derived"),
    ("stall_ratio", "consumer TTFT / E2E; see kv_stall_ratio"),
))

