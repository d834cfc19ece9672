"""The column groups result tables share, and the registry and glossary of every declared table.

Each experiment declares its own tables (``Experiment.tables``, in its module or its
``eN_tables.py``): every column's name, unit, source (``columns.SOURCES``), a one-line meaning
that says what the code computes (a stand-in or a proxy says so) and, for the columns a report
shows, a short label. Columns are listed in the order the code writes them; a conditional column
(E0's ``token_ids``, E5's rows of an unsupported mode) is declared too, and a frame may lack any
declared column. ``RunContext.write_table`` refuses a frame with an undeclared column.

Column groups several tables share (the run stamp, request records, latency statistics, the
engine's /metrics view, goodput) come from the helpers below, not retyped per table. The
registry (``tables``) and ``docs/columns.md`` (``glossary_markdown``) are built from the
declarations handed in; this package imports no experiment. ``__main__`` hands it the catalog's:

    python -m context_research.result_tables > docs/columns.md
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ..analysis.latency import CI_SUFFIXES, LATENCY_METRICS, STAT_SUFFIXES, THROUGHPUT_CI_METRICS
from ..analysis.intervals import BOOT_RESAMPLES, MIN_COMPLETIONS_PER_WINDOW, MIN_WAVES, WINDOWS
from ..analysis.stats import MIN_INTERVAL, MIN_POOLED_GROUPS, MIN_SAMPLES
from ..columns import SOURCE_MEANINGS, Column, Table, UnknownTableError

C = Column


# -- shared column groups ------------------------------------------------------------------------

def stamp_columns() -> tuple[Column, ...]:
    """``RunContext.stamp()``: the run identity every row of every table carries."""
    return (
        C("experiment", "", "label", "experiment name (e0 ... e6)", "experiment"),
        C("run_id", "", "label", "UTC start time of the run that wrote the row plus 8 hex digits of a hash of (config "
                                 "hash, time, pid)"),
        C("config_hash", "", "label", "sha256 of the experiment's config block, model profile, serving settings (and "
                                      "E4's dataset manifests)"),
        C("backend_mode", "", "label", "real (a vLLM engine answered) or simulated (no engine: numbers are not "
                                       "measurements)"),
        C("weights", "", "label", "real, dummy or random-embedded weights: only real weights make quality scores "
                                  "meaningful"),
        C("model_id", "", "label", "the model profile's source: a Hugging Face id or 'embedded'", "model"),
    )


TPOT_MEANING = ("decode time per output token: (last chunk - anchor chunk) / (output tokens after the anchor); the anchor "
         "is the second token-carrying chunk or, after an opening burst (opening_burst_tokens > 0), the first chunk "
         "after it, moved past chunks that were waiting behind it, so a late chunk does not shorten it "
         "(records.finalize_timing); empty when no token followed the anchor or the per-chunk counts were not exact. "
         "Unlike vllm bench serve's (E2E - TTFT) / (output tokens - 1), it counts neither the opening burst's "
         "tokens nor the first chunk's delay as decode time")


def per_request_engine_columns(**meaning: str) -> tuple[Column, ...]:
    """``RequestRecord``'s engine fields: the ``metrics`` object vLLM puts on a stream's final usage
    chunk when served with --enable-per-request-metrics (engine-core timestamps)."""
    empty = "; empty when the server sent no per-request metrics"
    return override((
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
        C("tpot_s", "s", "client", TPOT_MEANING),
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
    return override(cols, meaning)


_METRIC_MEANING = {
    "ttft": "TTFT (send to first streamed chunk)",
    "tpot": "TPOT ((last chunk - anchor chunk) / (output tokens after it), the anchor being the second chunk or "
            "the first after an opening burst; requests without a token after the anchor left out)",
    "itl": "inter-chunk gaps, pooled over every request (a chunk may carry more than one token)",
    "e2e": "E2E latency (send to last streamed chunk)",
}
STAT_MEANING = {"mean": "mean", "p50": "median", "p95": "95th percentile", "p99": "99th percentile"}


_CI_BOUND = {"ci_low": "lower", "ci_high": "upper"}
_CI_METHOD = {
    "mean": f"bootstrap-t, {BOOT_RESAMPLES} resamples, fixed seed",
    "quantile": "distribution-free order-statistic interval, interpolated between neighbouring order statistics",
    "pooled mean": "cluster-robust ratio mean, Student-t on requests - 1 degrees of freedom",
    "pooled quantile": "Woodruff's interval: cluster-robust CI of the share below, mapped back through the pooled "
                       "quantiles",
}
_CI_RULE = ", ".join(f"{s} {n}" for s, n in MIN_INTERVAL.items())
# Report labels of the latency metrics and of the engine's /metrics histograms.
METRIC_LABEL = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}
_HISTOGRAM_LABEL = {"itl": "ITL", "e2e": "E2E", "queue": "queue", "prefill": "prefill", "decode": "decode"}


def _ci_columns(metric: Column, method: str, empty: str = "") -> tuple[Column, ...]:
    """``<metric>_ci_low`` / ``_ci_high``: the 95 % CI of a statistic (docs/statistics.md)."""
    return tuple(C(f"{metric.name}_{b}", metric.unit, "derived",
                   f"{_CI_BOUND[b]} bound of the 95% CI of {metric.name} ({method}; coverage measured in "
                   f"docs/statistics.md); empty when {metric.name} is{empty}",
                   f"{metric.label} CI {b[3:]}" if metric.label else "")
                 for b in CI_SUFFIXES)


def stat_ci_columns(metric: Column, stat: str, pooled: bool = False) -> tuple[Column, ...]:
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
        C("n", "count", "client", "requests sent for the point", "requests"),
        C("n_ok", "count", "client", "requests that succeeded", "ok"),
        C("n_failed", "count", "client", "requests that failed (n - n_ok)", "failed"),
        C("n_read_whole", "count", "client", "successful requests whose whole stream arrived as one burst "
                                             "(records.read_whole: the client was not reading while the tokens were "
                                             "made, e.g. starved of CPU); they have no TPOT, so the TPOT statistics "
                                             "rest on the others", "read whole"),
    ]
    for metric in LATENCY_METRICS:
        for stat in STAT_SUFFIXES:
            text = f"{STAT_MEANING[stat]} of the successful requests' {_METRIC_MEANING[metric]}"
            if metric == "ttft" and ttft_note:
                text += f"; {ttft_note}"
            cols.append(C(f"{metric}_ms_{stat}", "ms", "client", text, f"{METRIC_LABEL[metric]} {stat}"))
    rule = ", ".join(f"{s} {n}" for s, n in MIN_SAMPLES.items())
    cols += [
        C("stats_note", "", "label", f"which statistics are empty because too few samples (minimum n {rule}; ITL: "
                                     f"gaps, from at least {MIN_POOLED_GROUPS} requests), which are stated without a "
                                     f"CI (minimum n for one {_CI_RULE}; ITL: requests) and, for a point's rates, why "
                                     f"they have no CI; empty when every statistic has its CI", "statistics note"),
        C("prompt_tokens_mean", "tokens", "engine", "mean server-counted prompt tokens of the successful requests",
          "mean prompt tokens"),
        C("output_tokens_mean", "tokens", "engine", "mean server-counted output tokens of the successful requests",
          "mean output tokens"),
    ]
    out: list[Column] = []
    for c in override(cols, meaning):
        metric, _, stat = c.name.partition("_ms_")
        if metric not in LATENCY_METRICS or stat not in STAT_SUFFIXES:
            out.append(c)
            continue
        need = f"{MIN_SAMPLES[stat]} gaps or {MIN_POOLED_GROUPS} requests" if metric == "itl" else \
            f"{MIN_SAMPLES[stat]} requests"
        out.append(c.with_meaning(f"{c.meaning}; empty with fewer than {need} (stats_note)"))
        out += stat_ci_columns(c, stat, pooled=metric == "itl")
    return tuple(out)


def _histogram(metric: str) -> str:
    return f"Δsum / Δcount of vLLM's {metric} histogram between /metrics scrapes around the point"


def engine_point_columns() -> tuple[Column, ...]:
    """``workload.engine_columns``: the engine's /metrics deltas around one point (E1, E2)."""
    cols = [
        C("engine_requests", "count", "engine", "Δcount of vllm:time_to_first_token_seconds: requests whose first "
                                                "token the engine recorded during the point", "engine requests"),
        C("engine_ttft_ms_mean", "ms", "engine",
          _histogram("vllm:time_to_first_token_seconds") + " (API-server arrival to the first token's output "
                                                            "there, queue included)", "engine TTFT mean"),
        C("engine_per_request_metrics", "count", "engine", "successful requests of the point whose reply carried "
                                                           "vLLM's per-request metrics (engine_ttft_ms)"),
    ]
    for q in ("p50", "p95", "p99"):
        col = C(f"engine_ttft_ms_{q}", "ms", "engine",
                f"{STAT_MEANING[q]} over the point's successful requests of their per-request engine_ttft_ms "
                f"(vLLM's --enable-per-request-metrics: first token - scheduled, queue excluded; numpy linear "
                f"interpolation between requests); empty without per-request metrics or with fewer than "
                f"{MIN_SAMPLES[q]} requests (the client's rule). Not from the histogram", f"engine TTFT {q}")
        cols += [col, *stat_ci_columns(col, q)]
    cols.append(C("engine_percentile_note", "", "label", "why engine_ttft_ms percentiles or their CIs are empty (no "
                                                         "per-request metrics, too few requests); empty when all are "
                                                         "filled"))
    for short, metric in (("itl", "vllm:inter_token_latency_seconds"),
                          ("e2e", "vllm:e2e_request_latency_seconds"),
                          ("queue", "vllm:request_queue_time_seconds"),
                          ("prefill", "vllm:request_prefill_time_seconds"),
                          ("decode", "vllm:request_decode_time_seconds")):
        cols.append(C(f"engine_{short}_ms_mean", "ms", "engine", _histogram(metric),
                      f"engine {_HISTOGRAM_LABEL[short]} mean"))
    cols += [
        C("engine_preemptions", "count", "engine", "Δ vllm:num_preemptions_total over the point", "preemptions"),
        C("engine_prompt_tokens", "tokens", "engine", "Δ vllm:prompt_tokens_total over the point"),
        C("engine_generation_tokens", "tokens", "engine", "Δ vllm:generation_tokens_total over the point"),
        C("engine_kv_cache_usage_peak", "ratio", "engine", "peak of the vllm:kv_cache_usage_perc gauge (a fraction "
                                                           "0-1) sampled every 0.25 s during the point; empty where "
                                                           "not sampled (always in E1)", "peak KV usage"),
        C("local_cache_hit_tokens", "tokens", "engine",
          "Δ vllm:prompt_tokens_by_source_total{source=local_cache_hit}: prefix-cache hits, must be 0; empty when "
          "the engine exports no such counter"),
    ]
    return tuple(cols)


def ttft_gap_columns() -> tuple[Column, ...]:
    """``workload.ttft_gap_columns``: client TTFT next to the engine's."""
    return (
        C("ttft_client_minus_engine_ms", "ms", "derived", "ttft_ms_mean - engine_ttft_ms_mean: HTTP, SSE streaming and "
                                                          "API-server time outside the engine's TTFT clock",
          "client - engine TTFT"),
        C("ttft_client_over_engine", "ratio", "derived", "ttft_ms_mean / engine_ttft_ms_mean", "client / engine TTFT"),
    )


def goodput_columns(names: Sequence[str]) -> tuple[Column, ...]:
    """``analysis.latency.goodput`` and the per-SLO attainments, in the order ``names`` lists them;
    each rate of ``THROUGHPUT_CI_METRICS`` is followed by its batch-means CI columns."""
    pool = {c.name: c for c in (
        C("duration_s", "s", "client", "wall time of the point: first send to last completion", "duration"),
        C("request_throughput_rps", "req/s", "derived", "successful requests / duration_s", "throughput"),
        C("output_throughput_tok_s", "tok/s", "derived", "server-counted output tokens of the successful requests / "
                                                         "duration_s", "output throughput"),
        C("total_token_throughput_tok_s", "tok/s", "derived", "server-counted prompt + output tokens of the successful "
                                                              "requests / duration_s"),
        C("ttft_slo_ms", "ms", "config", "TTFT SLO (client TTFT <= it meets)", "TTFT SLO"),
        C("tpot_slo_ms", "ms", "config", "TPOT SLO (client TPOT <= it meets; one output token always meets)",
          "TPOT SLO"),
        C("n_slo_met", "count", "derived", "requests that succeeded and met both SLOs"),
        C("slo_attainment", "ratio", "derived", "n_slo_met / requests sent (failed requests count as misses)",
          "SLO attainment"),
        C("ttft_slo_attainment", "ratio", "derived", "share of the requests sent that succeeded within the TTFT SLO "
                                                     "alone"),
        C("tpot_slo_attainment", "ratio", "derived", "share of the requests sent that succeeded within the TPOT SLO "
                                                     "alone"),
        C("goodput_rps", "req/s", "derived", "n_slo_met / duration_s: vLLM bench's per-run goodput (requests/s "
                                             "meeting both SLOs over this run; DistServe's goodput is a capacity: "
                                             "E2's capacity.csv)", "per-run goodput"),
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


def override(cols: Iterable[Column], meaning: dict[str, str]) -> tuple[Column, ...]:
    """``cols`` with the meanings ``meaning`` gives by name (where an experiment composes a shared
    column differently)."""
    cols = tuple(cols)
    unknown = set(meaning) - {c.name for c in cols}
    if unknown:
        raise ValueError(f"meaning overrides for undeclared columns: {sorted(unknown)}")
    return tuple(c.with_meaning(meaning[c.name]) if c.name in meaning else c for c in cols)


def status_columns(what: str = "point") -> tuple[Column, ...]:
    """``status`` and ``reason`` of a row that the integrity checks judge."""
    return (
        C("status", "", "label", f"ok, failed (a failed {what} keeps its numbers for inspection) or implausible "
                                 "(measured, but a number breaks a physical floor or disagrees with the engine's own "
                                 "view beyond the stated tolerance: analysis.integrity)", "status"),
        C("reason", "", "label", f"why the {what} failed or is implausible; empty when ok", "reason"),
    )


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


# -- the registry, built from the declarations handed in ---------------------------------------------

def tables(experiments: Mapping[str, Any]) -> dict[str, Table]:
    """Every table the declarations ``experiments`` (name -> ``Experiment``) declare, by their key
    ``"<experiment>/<file>"``."""
    out: dict[str, Table] = {}
    for exp in experiments.values():
        for table in exp.tables:
            if table.file in out:
                raise ValueError(f"table {table.file} is declared twice")
            out[table.file] = table
    return out


def data_columns(table: Table) -> list[str]:
    """A table's columns without the run stamp (``RunContext.frame`` appends that): the column
    order the code builds its rows in."""
    stamp = {c.name for c in stamp_columns()}
    return [name for name in table.names if name not in stamp]


# -- the glossary --------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def glossary_markdown(experiments: Mapping[str, Any]) -> str:
    """``docs/columns.md``: every declared table's columns with label, unit, source and meaning."""
    declared = tables(experiments)
    out = [
        "<!-- Generated from the experiments' table declarations; do not edit by hand. Regenerate with:",
        "     python -m context_research.result_tables > docs/columns.md -->",
        "",
        "# Result table columns",
        "",
        "Every CSV an experiment writes under `results/<experiment>/`, column by column, in the order they",
        "are written, and the tables its report shows from its summaries. A column may be absent from a",
        "given run (a conditional column, or a table whose rows all failed). `context_research.columns.write_table`",
        "refuses a column declared nowhere. A report heads a column with its label and unit.",
        "",
        "Sources:",
        "",
        "| source | meaning |",
        "|---|---|",
        *(f"| {s} | {_cell(m)} |" for s, m in SOURCE_MEANINGS.items()),
        "",
        "Tables: " + ", ".join(f"[`{key}`](#{_anchor(key)})" for key in declared),
        "",
        "Calibration tables (simulations of known truth under `docs/evidence/<date>-cpu-calibration/`, no run): "
        + ", ".join(f"[`{key}`](#{_anchor(key)})" for key in CALIBRATION_TABLES),
    ]
    for key, table in {**declared, **CALIBRATION_TABLES}.items():
        out += _table_section(key, table)
    return "\n".join(out) + "\n"


def _table_section(key: str, table: Table) -> list[str]:
    out = ["", f"## {key}", ""]
    if table.description:
        out += [f"{table.description[0].upper()}{table.description[1:]}; {len(table.columns)} columns.", ""]
    out += ["| column | label | unit | source | meaning |", "|---|---|---|---|---|"]
    out += [f"| `{c.name}` | {_cell(c.label)} | {c.unit} | {c.source} | {_cell(c.meaning)} |" for c in table.columns]
    if table.retired:
        out += ["", "Retired (earlier evidence carries them; no longer written):", "",
                "| column | why, and what replaced it |", "|---|---|"]
        out += [f"| `{name}` | {_cell(why)} |" for name, why in table.retired]
    return out


def _anchor(key: str) -> str:
    """GitHub's heading anchor: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return "".join(ch for ch in key.lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")
