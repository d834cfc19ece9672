"""E4's quality.csv rows from prediction lines, and whether a score means anything.

Scores are only quality numbers with real weights, a real engine and the real benchmark data:
otherwise each row says ``meaningful = false`` and the summary says why.
"""

from __future__ import annotations

import math
from typing import Any

from ..analysis.stats import mean
from ..result_tables import data_columns
from .tables import E4_BY_LENGTH, E4_QUALITY

PERCENT = "percent"
PERPLEXITY = "perplexity"
OVERALL = "overall"

# Column order of quality.csv, declared once with E4's tables.
QUALITY_COLUMNS = data_columns(E4_QUALITY)


def meaningful_verdict(weights: str, backend_mode: str, data_source: str | None = None) -> tuple[bool, str]:
    """Whether a score says anything about model quality, and why not."""
    if backend_mode != "real":
        return False, f"backend {backend_mode}: no engine produced these answers"
    if weights != "real":
        return False, f"{weights} weights: the model was never trained, its scores measure nothing about quality"
    if data_source == "fixture":
        return False, "fixture data (tests/fixtures/e4), not the benchmark"
    return True, "real weights, real engine"


def summary_verdict(rows: list[dict], weights: str, backend_mode: str) -> tuple[bool, str]:
    """The run's ``meaningful`` flag, the overall row's (the last of ``rows``), and why."""
    meaningful = bool(rows) and bool(rows[-1]["meaningful"])
    ok, why = meaningful_verdict(weights, backend_mode)
    if ok and not meaningful:
        fixture = [r["dataset"] for r in rows[:-1] if r["data_source"] == "fixture"]
        why = f"fixture data for {', '.join(fixture)}" if fixture else "no dataset row is meaningful"
    return meaningful, why


def score_of(metric: str, ok: list[dict]) -> tuple[float | None, str, float | None, int | None]:
    """(score, scale, bits per token, scored tokens) of the answered samples: perplexity rows
    exp(total NLL / scored tokens) and its bits per token; the others the mean 0-100 score."""
    if metric != PERPLEXITY:
        return mean([p["score_percent"] for p in ok]), PERCENT, None, None
    tokens = sum(int(p["scored_tokens"]) for p in ok)
    if not tokens:
        return None, PERPLEXITY, None, tokens
    mean_nll = sum(float(p["nll_sum"]) for p in ok) / tokens
    return math.exp(mean_nll), PERPLEXITY, mean_nll / math.log(2), tokens


def dataset_row(ds: Any, metric: str, preds: list[dict], *, weights: str, backend_mode: str,
                data_source: str) -> dict:
    """One quality.csv row from the prediction lines of ``ds`` (a ``datasets.specs.Dataset``: its
    benchmark, name, task and context length; not imported, since ``datasets`` imports ``quality``)."""
    ok = [p for p in preds if p["status"] == "ok"]
    score, scale, bits, scored = score_of(metric, ok)
    failed = [p for p in preds if p["status"] != "ok"]
    status = "ok" if preds and not failed else ("failed" if not ok else "partial")
    reason = "; ".join(sorted({str(p.get("reason")) for p in failed})) if failed else ("no samples" if not preds else "")
    meaningful, _ = meaningful_verdict(weights, backend_mode, data_source)
    return {
        "benchmark": ds.benchmark, "task": ds.task, "context_tokens": ds.context_tokens, "dataset": ds.name,
        "n": len(preds), "n_ok": len(ok), "n_failed": len(failed), "metric": metric, "score": score,
        "score_scale": scale, "mean_input_tokens": mean([p.get("input_tokens") for p in preds]),
        "n_input_tokens": sum(1 for p in preds if p.get("input_tokens") is not None),
        "truncated": sum(1 for p in preds if p.get("truncated")), "status": status, "reason": reason[:500],
        "meaningful": meaningful, "data_source": data_source, "bits_per_token": bits, "scored_tokens": scored,
    }


def overall_row(rows: list[dict]) -> dict:
    """Macro mean of the 0-100 task scores (perplexity rows are on another scale and are left
    out of the score); sample counts, truncation and input length over every row (the mean
    input length over the samples the server counted, ``n_input_tokens`` of each row)."""
    percent = [r["score"] for r in rows if r["score_scale"] == PERCENT]
    n = sum(r["n"] for r in rows)
    measured = [(r["mean_input_tokens"], r.get("n_input_tokens", r["n"])) for r in rows
                if r["mean_input_tokens"] is not None]
    tokens = sum(m * k for m, k in measured)
    counted = sum(k for _, k in measured)
    statuses = {r["status"] for r in rows}
    return {
        "benchmark": OVERALL, "task": OVERALL, "context_tokens": None, "dataset": OVERALL,
        "n": n, "n_ok": sum(r["n_ok"] for r in rows), "n_failed": sum(r["n_failed"] for r in rows),
        "metric": "macro_mean_percent", "score": mean(percent), "score_scale": PERCENT,
        "mean_input_tokens": tokens / counted if counted else None, "n_input_tokens": counted,
        "truncated": sum(r["truncated"] for r in rows),
        "status": "ok" if statuses <= {"ok"} and rows else ("failed" if statuses <= {"failed"} else "partial"),
        "reason": "; ".join(f"{r['benchmark']}/{r['dataset']}: {r['status']}" for r in rows if r["status"] != "ok")[:500],
        "meaningful": bool(rows) and all(r["meaningful"] for r in rows),
        "data_source": "+".join(sorted({r["data_source"] for r in rows})),
        "bits_per_token": None, "scored_tokens": None,
    }


# ----------------------------------------------------------------------------- by context length

BY_LENGTH_COLUMNS = data_columns(E4_BY_LENGTH)
ALL = "all"


def length_edges(buckets: list[int] | None, ruler_lengths: list[int] | None, max_model_len: int) -> list[int]:
    """Bucket upper edges for samples without a configured length: ``length_buckets`` if given,
    else the RULER context lengths, always closed by ``max_model_len`` (no prompt is longer)."""
    edges = {int(x) for x in (buckets if buckets else (ruler_lengths or []))}
    return sorted(edges | {int(max_model_len)})


def length_bucket(line: dict, edges: list[int]) -> int | None:
    """A prediction line's context-length bucket: its dataset's configured length (RULER's
    context length, PG19's preceding context), else the smallest edge >= its prompt tokens
    (the server's count, ours when the server gave none); None when neither is known."""
    if line.get("context_tokens") is not None:
        return int(line["context_tokens"])
    tokens = line.get("input_tokens") if line.get("input_tokens") is not None else line.get("input_tokens_local")
    if tokens is None:
        return None
    return next((e for e in edges if int(tokens) <= e), edges[-1] if edges else None)


def _bucket_row(benchmark: str, task: str, bucket: int, metric: str, lines: list[dict], *, meaningful: bool,
                data_source: str) -> dict:
    ok = [p for p in lines if p["status"] == "ok"]
    score, scale, bits, _ = score_of(metric, ok)
    return {"benchmark": benchmark, "task": task, "length_bucket": bucket, "n": len(lines), "n_ok": len(ok),
            "metric": metric, "score": score, "score_scale": scale, "bits_per_token": bits,
            "mean_input_tokens": mean([p.get("input_tokens") for p in lines]), "meaningful": meaningful,
            "data_source": data_source}


def by_length_rows(predictions: list[dict], dataset_rows: list[dict]) -> list[dict]:
    """quality_by_length.csv: per (benchmark, task, bucket) over the prediction lines that have a
    ``length_bucket``, then one ``all`` row per bucket over every 0-100 sample in it. A row is
    meaningful only if every dataset it draws on is (``dataset_rows``, quality.csv's rows)."""
    info = {(r["benchmark"], r["dataset"]): r for r in dataset_rows}
    groups: dict[tuple[str, str, int, str], list[dict]] = {}
    for p in predictions:
        if p.get("length_bucket") is None:
            continue
        groups.setdefault((p["benchmark"], p["task"], int(p["length_bucket"]), p["metric"]), []).append(p)

    def verdict(lines: list[dict]) -> tuple[bool, str]:
        rows = [info[(p["benchmark"], p["dataset"])] for p in lines if (p["benchmark"], p["dataset"]) in info]
        return (bool(rows) and all(r["meaningful"] for r in rows),
                "+".join(sorted({r["data_source"] for r in rows})))

    out = []
    for (bench, task, bucket, metric), lines in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        ok, source = verdict(lines)
        out.append(_bucket_row(bench, task, bucket, metric, lines, meaningful=ok, data_source=source))
    for bucket in sorted({k[2] for k in groups if k[3] != PERPLEXITY}):
        lines = [p for k, ls in groups.items() if k[2] == bucket and k[3] != PERPLEXITY for p in ls]
        ok, source = verdict(lines)
        out.append(_bucket_row(ALL, ALL, bucket, "mean_percent", lines, meaningful=ok, data_source=source))
    return out
