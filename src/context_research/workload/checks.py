"""Whether a point measured what it names: every request served, the server's prompt length the
target's, no prefix-cache hit, the engine alive. A point that fails a check is a failed row with
the reason."""

from __future__ import annotations

from typing import Any, Sequence

from ..records import RequestRecord


def prompt_length_mismatches(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Successful requests whose server-counted prompt length differs from the target."""
    return [r for r in records if r.ok and r.prompt_tokens_target is not None
            and r.prompt_tokens != r.prompt_tokens_target]


def local_cache_hit_tokens(engine: dict[str, Any]) -> float | None:
    """Prompt tokens the engine took from its local prefix cache during a point (must be 0).

    None when the engine exports no ``vllm:prompt_tokens_by_source`` counter at all; 0 when it
    exports the counter but never created the ``local_cache_hit`` label (no hit ever happened).
    """
    by_source = engine.get("engine_prompt_tokens_by_source") or {}
    if not by_source:
        return None
    return float(by_source.get("local_cache_hit", 0.0))


def point_status(records: Sequence[RequestRecord], cache_hits: float | None) -> tuple[str, str]:
    """("ok", "") or ("failed", reason): any failed request, a prompt-length mismatch or a
    prefix-cache hit fails the point (its numbers stay in the row for inspection)."""
    reasons = []
    failed = [r for r in records if not r.ok]
    if not records:
        reasons.append("no request was sent")
    if failed:
        reasons.append(f"{len(failed)} of {len(records)} requests failed (first: {failed[0].error})")
    mismatched = prompt_length_mismatches(records)
    if mismatched:
        r = mismatched[0]
        reasons.append(f"prompt length mismatch in {len(mismatched)} request(s): the server counted "
                       f"{r.prompt_tokens} tokens for a {r.prompt_tokens_target}-token target ({r.request_id})")
    if cache_hits:
        reasons.append(f"{cache_hits:g} prompt tokens were prefix-cache hits (must be 0)")
    return ("failed", "; ".join(reasons)) if reasons else ("ok", "")


def died_in_flight(row: dict[str, Any], records: Sequence[RequestRecord], exit_reason: str | None) -> dict[str, Any]:
    """A point during which the engine died (it has exited and some request of the point failed,
    or none was served): failed, with the engine's reason rather than its clients' broken streams."""
    if exit_reason and (not records or any(not r.ok for r in records)):
        row.update(status="failed", reason=exit_reason)
    return row
