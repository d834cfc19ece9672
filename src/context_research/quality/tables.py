"""E4's result tables, column by column: unit, source, meaning and, for the columns its report
shows, a label (``docs/columns.md``). ``experiments/e4.py`` declares them (``tables=``); they
live here, below the experiments, so that ``quality.verdicts`` and ``quality.beside_speed`` take
their column order from them without importing the experiment.
"""

from __future__ import annotations

from ..columns import Column, Table
from ..result_tables import stamp_columns

C = Column

E4_QUALITY = Table("e4/quality.csv", (
    C("benchmark", "", "label", "ruler, longbench, infinitebench, pg19, or overall", "benchmark"),
    C("task", "", "label", "the benchmark's task", "task"),
    C("context_tokens", "tokens", "config", "RULER context length; PG19 tokens of book before the scored window; "
                                            "empty for LongBench and InfiniteBench", "context"),
    C("n", "count", "client", "samples of the dataset"),
    C("metric", "", "label", "the task's metric (perplexity, a scorer name, or macro_mean_percent on the overall row)",
      "metric"),
    C("score", "", "derived", "percent rows: mean 0-100 score of the ok samples (client-side scorers on the served "
                              "text); perplexity rows (PG19): exp(total NLL / scored tokens) of the scored windows "
                              "given context_tokens of preceding book, from prompt logprobs; overall: "
                              "macro mean of the percent rows", "score"),
    C("mean_input_tokens", "tokens", "engine", "mean server-counted prompt tokens over the samples the server counted",
      "mean input tokens"),
    C("truncated", "count", "derived", "samples truncated (at materialization or to fit max_model_len)", "truncated"),
    C("status", "", "label", "ok, partial (some samples failed) or failed", "status"),
    C("meaningful", "bool", "derived", "true only with real weights, the real engine and non-fixture data",
      "meaningful"),
    C("n_ok", "count", "client", "samples answered and scored", "ok"),
    C("n_failed", "count", "client", "samples not answered or not fitted"),
    C("score_scale", "", "label", "percent (0-100) or perplexity: the unit of score"),
    C("data_source", "", "label", "synthetic, fixture, local or hub (overall: every source, +-joined)", "data"),
    C("dataset", "", "label", "materialized dataset name (RULER: task-length)"),
    C("reason", "", "label", "distinct failure reasons of the samples (overall: the datasets not ok)", "reason"),
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


# Not a file: the report's table of E4's quality beside E1's latency and E5's memory
# (``quality.beside_speed.join_by_length``, drawn in beside_speed.svg).
E4_BESIDE_SPEED = Table("e4/beside_speed", (
    C("length_tokens", "tokens", "derived", "an E4 length bucket (quality_by_length.csv length_bucket)", "length"),
    C("e4_score", "", "derived", "the bucket's pooled 0-100 score (quality_by_length.csv, benchmark all)", "E4 score"),
    C("e4_n", "count", "client", "samples in the bucket's pooled score", "E4 samples"),
    C("e4_meaningful", "bool", "derived", "the pooled score is a quality measurement (real weights, real engine, "
                                          "non-fixture data)", "meaningful"),
    C("pg19_perplexity", "", "derived", "PG19's token-weighted perplexity with this much preceding book",
      "PG19 perplexity"),
    C("pg19_bits_per_token", "bits/token", "derived", "PG19's total NLL / scored tokens / ln 2 at this length",
      "PG19 cross-entropy"),
    C("e1_ttft_ms_p50", "ms", "client", "E1's client TTFT p50 at exactly this prompt length (latency.csv, ok rows); "
                                        "empty where E1 has no such point", "E1 TTFT p50"),
    C("e1_tpot_ms_p50", "ms", "client", "E1's client TPOT p50 at exactly this prompt length", "E1 TPOT p50"),
    C("e5_kv_used_gib", "GiB", "analytical", "E5's kv_used_analytical_gib, aggregated mode, at exactly this prompt "
                                             "length (the peak of repeated points)", "E5 KV used"),
    C("e5_nvml_peak_used_gib", "GiB", "nvml", "E5's nvml_peak_used_gib at this prompt length; empty on CPU",
      "E5 NVML peak"),
    C("e5_process_rss_gib", "GiB", "process", "E5's process_rss_gib at this prompt length", "E5 engine RSS peak"),
), "not a file: the report's table of E4 quality beside E1 latency and E5 memory, one row per length bucket")
