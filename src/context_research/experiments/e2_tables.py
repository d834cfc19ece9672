"""E2's result tables, column by column: unit, source, meaning and, for the columns its report
shows, a label (``docs/columns.md``). Beside ``e2.py``, which declares them, to keep it short.
"""

from __future__ import annotations

from ..analysis.stats import MIN_SAMPLES
from ..columns import Column, Table
from ..result_tables import (engine_point_columns, goodput_columns, integrity_columns, latency_stat_columns,
                             measured_on_column, point_check_columns, request_record_columns, stamp_columns,
                             stat_ci_columns, status_columns, ttft_gap_columns)

C = Column

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
            out += [col, *stat_ci_columns(col, stat)]
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
                                          "first-half) and so did vllm:num_requests_waiting where exported",
          "saturated"),
        C("stopped_early", "bool", "derived", "the point stopped sending once plainly saturated (saturated and the "
                                              "last 8 completions' attainment < half the target): its rates cover "
                                              "the requests sent", "stopped early"),
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
                                                                "the window (attributed at completion) / its length",
          "steady output throughput"),
        *_steady_percentile_columns(),
        C("steady_slo_attainment", "ratio", "derived", "share meeting both SLOs " + _E2_STEADY, "steady attainment"),
        C("steady_note", "", "label", "why steady_* columns or their CIs are empty (too few requests in the window, "
                                      "too few for a percentile or its CI)"),
        C("energy_available", "bool", "nvml", "the total-energy counter was read before and after the point"),
        C("energy_j", "J", "nvml", "energy of the point: counter delta, " + _E2_ENERGY),
        C("energy_j_per_output_token", "J/token", "derived", "energy_j / output tokens of the successful requests; "
                                                             "empty with energy_note where NVML has no counter",
          "energy per output token"),
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
                            "arrivals), capacity (a rate probed by the capacity search) or trace (a replayed trace)",
      "mode"),
    C("level", "", "config", "concurrency cap (mode concurrency, requests), arrival rate (modes rate and capacity, "
                             "req/s) or the trace's mean arrival rate (mode trace, req/s)", "level"),
    *status_columns(),
    C("prompt_tokens", "tokens", "config", "prompt length of every request (experiments.e2.prompt_tokens, or the "
                                           "capacity search's length); empty for a trace (see prompt_tokens_mean)",
      "prompt tokens"),
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

