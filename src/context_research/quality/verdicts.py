"""E4's quality.csv rows from prediction lines, and whether a score means anything.

Scores are only quality numbers with real weights, a real engine and the real benchmark data:
otherwise each row says ``meaningful = false`` and the summary says why.
"""

from __future__ import annotations

import math

from ..analysis.stats import mean
from ..datasets.specs import Dataset
from ..result_tables import data_columns

PERCENT = "percent"
PERPLEXITY = "perplexity"
OVERALL = "overall"

# Column order of quality.csv, declared once in result_tables.
QUALITY_COLUMNS = data_columns("e4/quality.csv")


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


def dataset_row(ds: Dataset, metric: str, preds: list[dict], *, weights: str, backend_mode: str,
                data_source: str) -> dict:
    """One quality.csv row from the dataset's prediction lines."""
    ok = [p for p in preds if p["status"] == "ok"]
    bits = scored = None
    if metric == PERPLEXITY:
        tokens = sum(int(p["scored_tokens"]) for p in ok)
        mean_nll = sum(float(p["nll_sum"]) for p in ok) / tokens if tokens else None
        score = math.exp(mean_nll) if tokens else None
        bits = mean_nll / math.log(2) if tokens else None
        scored = tokens
        scale = PERPLEXITY
    else:
        score = mean([p["score_percent"] for p in ok])
        scale = PERCENT
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
