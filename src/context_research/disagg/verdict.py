"""Whether the KV really moved: the status rules of a handoff and of a disaggregated point.

A disaggregated request that the consumer answered proves nothing by itself: a consumer that
found no KV recomputes the prompt and answers just the same. So a handoff counts only when

1. the consumer's request succeeded;
2. the measured bytes (the connector's files, else the consumer engine's loaded bytes) agree with
   the analytical count for the prompt (``bytes_agree``);
3. the consumer's connector loaded exactly the expected prompt tokens (``external_kv_tokens ==
   expected_external_kv_tokens``, both per request).

A point is ``ok`` only if every handoff of it counts and, where the decode engine exports
``vllm:prompt_tokens_by_source_total``, its ``external_kv_transfer`` tokens over the point equal
the expected total. Otherwise the point is ``failed`` with the first reason.
"""

from __future__ import annotations

from typing import Any, Sequence


def handoff_verdict(row: dict[str, Any]) -> tuple[bool, str]:
    """(kv_moved, why) for one handoff row (``Handoff.as_row``)."""
    if not row.get("ok"):
        return False, f"consumer request failed: {row.get('error') or 'unknown error'}"
    if row.get("bytes_agree") is None:
        return False, f"KV bytes not measured (bytes_source: {row.get('bytes_source')})"
    if row["bytes_agree"] is False:
        return False, (f"KV bytes disagree with the analytical count: relative error "
                       f"{row.get('bytes_relative_error'):+.2%} ({row.get('bytes_source')})")
    expected, loaded = row.get("expected_external_kv_tokens"), row.get("external_kv_tokens")
    if expected is None:
        return False, f"no expected external token count for connector {row.get('connector')}"
    if loaded is None:
        return False, "the consumer's loaded tokens were not recorded (no ledger entry)"
    if int(loaded) != int(expected):
        what = "recomputed the prompt" if int(loaded) == 0 else f"loaded {int(loaded)}"
        return False, f"the consumer {what} instead of loading {int(expected)} tokens"
    return True, "KV moved: bytes agree and the consumer loaded the expected tokens"


def point_verdict(handoff_rows: Sequence[dict[str, Any]], engine_external_tokens: float | None
                  ) -> tuple[bool, str | None]:
    """(ok, reason) of a disaggregated point's transfer, from its handoffs and the decode engine's
    ``external_kv_transfer`` prompt-token counter over the point (None: not exported)."""
    rows = list(handoff_rows)
    if not rows:
        return False, "no KV handoff was made"
    failed = [r for r in rows if not r.get("kv_moved")]
    if failed:
        return False, f"{len(failed)} of {len(rows)} handoffs did not move the KV: {failed[0]['kv_check']}"
    expected = sum(int(r["expected_external_kv_tokens"]) for r in rows)
    if engine_external_tokens is not None and int(round(engine_external_tokens)) != expected:
        return False, (f"the decode engine counted {int(round(engine_external_tokens))} external-KV prompt tokens, "
                       f"{expected} expected")
    return True, None
