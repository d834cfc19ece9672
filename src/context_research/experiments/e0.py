"""E0: smoke and reproducibility.

* N identical greedy requests must return identical tokens.
* Repeated short runs give the coefficient of variation of mean TTFT and TPOT across runs,
  judged against the exit criterion (default CV <= 5%).
* Strict-backend checks: which engine answered, and that it was not the simulated one.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ..analysis.stats import coefficient_of_variation, mean, ms, summarize
from ..hashing import sha256_obj
from ..io import write_json
from ..metadata import engine_distribution
from ..prompts import token_id_prompt
from ..records import GenerationRequest, RequestRecord
from ..workload import prompt_length_mismatches
from .declaration import ONE_ENGINE, Experiment, Figure
from .runner import RunContext
from .session import EngineSession


def _requests(prefix: str, n: int, prompt: list[int], cfg: dict, seed: int,
              return_token_ids: bool = False) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=f"{prefix}-{i}", prompt=list(prompt), max_tokens=cfg["max_tokens"],
                              prompt_tokens_target=len(prompt), temperature=0.0, seed=seed,
                              return_token_ids=return_token_ids)
            for i in range(n)]


def server_version(session: EngineSession) -> str | None:
    base = getattr(session.backend, "base_url", None)
    if base is None:
        return None
    try:
        with urllib.request.urlopen(base + "/version", timeout=10) as resp:
            return json.loads(resp.read()).get("version")
    except Exception:
        return None


def strict_backend_checks(session: EngineSession) -> dict[str, Any]:
    version = server_version(session)
    return {
        "backend_mode": session.backend_mode,
        "strict": session.backend_mode == "real",
        "engine_distribution": engine_distribution(),
        "server_reported_version": version,
        "server_answered_version_endpoint": version is not None,
        "engine_device": session.backend.info().get("device"),
    }


def _output_key(rec: RequestRecord) -> str:
    return sha256_obj(rec.token_ids if rec.token_ids is not None else rec.text)


async def run(session: EngineSession, cfg: dict, ctx: RunContext) -> dict:
    seed = cfg["seed"]
    rows: list[dict] = []

    def keep(phase: str, records: list[RequestRecord]) -> None:
        for r in records:
            rows.append({"phase": phase, **r.as_row(keep_tokens=phase == "identical")})

    warm_prompt = token_id_prompt(cfg["prompt_tokens"], seed + 1_000_003, session.model)
    warm, _ = await session.run_requests(_requests("warmup", cfg["warmup_requests"], warm_prompt, cfg, seed),
                                         max_concurrency=1, desc="warmup")
    keep("warmup", warm)

    prompt = token_id_prompt(cfg["prompt_tokens"], seed, session.model)
    identical, _ = await session.run_requests(
        # Only the determinism check compares token ids; the timed repeats below do not ask for
        # them (the echoed prompt ids would inflate client TTFT).
        _requests("identical", cfg["identical_requests"], prompt, cfg, seed, return_token_ids=True),
        max_concurrency=1, desc="identical")
    keep("identical", identical)
    ok = [r for r in identical if r.ok]
    distinct = sorted({_output_key(r) for r in ok})
    determinism = {
        "requests": len(identical),
        "ok": len(ok),
        "distinct_outputs": len(distinct),
        "all_identical": len(ok) == len(identical) and len(distinct) == 1,
        "compared": "token_ids" if ok and ok[0].token_ids is not None else "text",
        "output_tokens": sorted({r.output_tokens for r in ok}),
        "reference_output_sha256": distinct[0] if len(distinct) == 1 else None,
    }

    per_repeat = []
    all_repeat_records: list[RequestRecord] = []
    before = session.snapshot()
    for k in range(cfg["repeats"]):
        reqs = [GenerationRequest(request_id=f"repeat{k}-{i}",
                                  prompt=token_id_prompt(cfg["prompt_tokens"], seed + 10 + i, session.model),
                                  max_tokens=cfg["max_tokens"], prompt_tokens_target=cfg["prompt_tokens"],
                                  temperature=0.0, seed=seed)
                for i in range(cfg["requests_per_repeat"])]
        records, duration = await session.run_requests(reqs, max_concurrency=1, desc=f"repeat {k}")
        keep(f"repeat-{k}", records)
        all_repeat_records += records
        per_repeat.append({
            "repeat": k, "duration_s": duration, "ok": sum(r.ok for r in records),
            "ttft_ms_mean": ms(mean([r.ttft_s for r in records])),
            "tpot_ms_mean": ms(mean([r.tpot_s for r in records])),
        })
    after = session.snapshot()
    from ..engine_metrics import engine_summary

    cv_ttft = coefficient_of_variation([p["ttft_ms_mean"] for p in per_repeat])
    cv_tpot = coefficient_of_variation([p["tpot_ms_mean"] for p in per_repeat])
    threshold = cfg["cv_threshold"]
    variability = {
        "repeats": cfg["repeats"],
        "requests_per_repeat": cfg["requests_per_repeat"],
        "per_repeat": per_repeat,
        "cv_ttft": cv_ttft,
        "cv_tpot": cv_tpot,
        "cv_threshold": threshold,
        "ttft_within_threshold": cv_ttft is not None and cv_ttft <= threshold,
        "tpot_within_threshold": cv_tpot is not None and cv_tpot <= threshold,
        "measured_on": "client",
    }
    prompt_mismatch = [r.request_id for r in prompt_length_mismatches(identical + all_repeat_records)]
    summary = {
        **ctx.stamp(),
        "strict_backend": strict_backend_checks(session),
        "determinism": determinism,
        "variability": variability,
        "latency_client": {**summarize([r.ttft_s for r in all_repeat_records], "ttft_ms", 1000),
                           **summarize([r.tpot_s for r in all_repeat_records], "tpot_ms", 1000),
                           **summarize([r.e2e_s for r in all_repeat_records], "e2e_ms", 1000),
                           "measured_on": "client"},
        "latency_engine": engine_summary(before, after) if before and after else {"available": False},
        "prompt_tokens_mismatch": prompt_mismatch,
        "failed_requests": sum(1 for r in rows if not r["ok"]),
        "workload": {k: cfg[k] for k in ("seed", "prompt_tokens", "max_tokens", "warmup_requests",
                                         "identical_requests", "repeats", "requests_per_repeat")},
        "passed": bool(determinism["all_identical"] and not prompt_mismatch
                       and session.backend_mode == "real"),
    }
    ctx.write_table("requests", ctx.frame(rows))
    write_json(ctx.path("summary"), summary)
    return {"passed": summary["passed"], "all_identical": determinism["all_identical"],
            "cv_ttft": cv_ttft, "cv_tpot": cv_tpot}


from . import e0_report  # noqa: E402  (bottom import: the report reads this module's declaration)

EXPERIMENT = Experiment(
    name="e0", title="E0 — smoke and reproducibility", category="E0 smoke and reproducibility",
    engines=ONE_ENGINE, body=run,
    outputs={"summary": "summary.json", "requests": "requests.csv", "engine_log": "engine.log"},
    figures=(Figure("variability", "variability.svg", "e0_variability.rst"),
             Figure("repeats", "repeats.html", "e0_repeats.rst")),
    report=e0_report,
    analysis_keys=("cv_threshold",),
)
