"""Whether the KV really moved: the status rules of a handoff and of a disaggregated point.

A disaggregated request that the consumer answered proves nothing by itself: a consumer that
found no KV recomputes the prompt and answers just the same. So a handoff counts only when

1. the consumer's request succeeded;
2. where the connector leaves files (ExampleConnector), the files' bytes agree with the analytical
   count for the prompt (``bytes_agree``); a connector without files is checked per point (below);
3. the consumer's connector loaded exactly the expected prompt tokens (``external_kv_tokens ==
   expected_external_kv_tokens``, both per request).

A point is ``ok`` only if every handoff of it counts, where the decode engine exports
``vllm:prompt_tokens_by_source_total`` its ``external_kv_transfer`` tokens over the point equal
the expected total, and the point's byte check (``point_bytes_check``) does not disagree. NIXL
reports the bytes it moved (``vllm:nixl_bytes_transferred``, summed over the point on the engine
that issued the transfers); they must agree with the analytical count summed over the point's
handoffs. Tokens loaded x bytes per token (``kv_bytes_loaded``) is derived from the token count
the third rule already checks, so it cannot disagree and is never a byte check. Where no byte
count exists (no NIXL counter, another connector) the point says it could not check; it is not
failed for that, and it does not pass a byte check it never had. Otherwise the point is
``failed`` with the first reason.
"""

from __future__ import annotations

from typing import Any, Sequence

FILES = "files"
NIXL_COUNTER = "engine counter vllm:nixl_bytes_transferred"


def handoff_verdict(row: dict[str, Any]) -> tuple[bool, str]:
    """(kv_moved, why) for one handoff row (``Handoff.as_row``)."""
    if not row.get("ok"):
        return False, f"consumer request failed: {row.get('error') or 'unknown error'}"
    per_handoff_bytes = row.get("bytes_source") == FILES or row.get("connector") == "ExampleConnector"
    if per_handoff_bytes and row.get("bytes_agree") is None:
        return False, f"KV bytes not measured (bytes_source: {row.get('bytes_source')})"
    if per_handoff_bytes and row["bytes_agree"] is False:
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
    if per_handoff_bytes:
        return True, "KV moved: bytes agree and the consumer loaded the expected tokens"
    return True, "KV moved: the consumer loaded the expected tokens (bytes are checked per point)"


def point_bytes_check(connector: str, ok_rows: Sequence[dict[str, Any]], counted: float | None,
                      counter_engine: str | None, tolerance: float) -> dict[str, Any]:
    """The point's byte columns: what was compared (``bytes_source``), the signed relative error
    (``bytes_relative_error_max``), ``bytes_agree`` (None: could not check), the analytical total
    and a sentence (``kv_bytes_check``). ``ok_rows``: the rows of the handoffs whose consumer
    succeeded; ``counted``: NIXL's byte counter over the point (None: not exported)."""
    analytical = sum(r["analytical_bytes"] for r in ok_rows if r.get("analytical_bytes") is not None)
    out = {"analytical_bytes_total": analytical or None, "bytes_source": None, "bytes_relative_error_max": None,
           "bytes_agree": None}
    if ok_rows and all(r.get("bytes_source") == FILES for r in ok_rows):
        errs = [r["bytes_relative_error"] for r in ok_rows if r.get("bytes_relative_error") is not None]
        flags = [r.get("bytes_agree") for r in ok_rows]
        agree = False if any(f is False for f in flags) else (True if all(f is True for f in flags) else None)
        worst = max(errs, key=abs) if errs else None
        out.update(bytes_source=FILES, bytes_relative_error_max=worst, bytes_agree=agree)
        out["kv_bytes_check"] = _sentence("the connector's files", agree, worst, tolerance, len(ok_rows))
        return out
    if not ok_rows:
        out["kv_bytes_check"] = "could not check: no handoff of the point succeeded"
        return out
    if counter_engine is None:
        out["kv_bytes_check"] = f"could not check: {connector} reports no count of the bytes it moved"
        return out
    if counted is None:
        out["kv_bytes_check"] = (f"could not check: the {counter_engine} engine exported no "
                                 f"vllm:nixl_bytes_transferred over the point")
        return out
    err = (float(counted) - analytical) / analytical if analytical else None
    agree = None if err is None else abs(err) <= tolerance
    out.update(bytes_source=f"{NIXL_COUNTER} ({counter_engine} engine)", bytes_relative_error_max=err,
               bytes_agree=agree)
    what = f"NIXL's byte counter ({counter_engine} engine: {counted:,.0f} bytes vs {analytical:,.0f} analytical)"
    out["kv_bytes_check"] = _sentence(what, agree, err, tolerance, len(ok_rows))
    return out


def _sentence(what: str, agree: bool | None, err: float | None, tolerance: float, handoffs: int) -> str:
    if agree is None:
        return f"could not check: {what} gave no comparable count"
    word = "agree" if agree else "DISAGREE"
    return (f"{what} {word} with the analytical count over {handoffs} handoff(s): largest relative error "
            f"{err:+.2%}, tolerance {tolerance:.0%}")


def point_verdict(handoff_rows: Sequence[dict[str, Any]], engine_external_tokens: float | None,
                  byte_check: dict[str, Any] | None = None) -> tuple[bool, str | None]:
    """(ok, reason) of a disaggregated point's transfer, from its handoffs, the decode engine's
    ``external_kv_transfer`` prompt-token counter over the point (None: not exported) and the
    point's byte check (``point_bytes_check``; its ``bytes_agree`` False fails the point)."""
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
    if byte_check and byte_check.get("bytes_agree") is False:
        return False, f"KV bytes: {byte_check['kv_bytes_check']}"
    return True, None
