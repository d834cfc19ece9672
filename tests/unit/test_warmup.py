"""The warm-up stopping rule (context_research.warmup), driven through its real loop with
servers whose TTFT sequence is known: a drift that ends, one that never does, noise on top."""

import asyncio
import math

import numpy as np
import pytest

from context_research.records import RequestRecord
from context_research.warmup import WarmupRule, settled, spread, warm_session, warm_up


def _serve(ttfts_ms, per_round=1, log=None):
    """serve_round for warm_up: round k's requests all take ttfts_ms[k] (ms)."""
    async def serve_round(k):
        if log is not None:
            log.append(k)
        if ttfts_ms[k] is None:  # the round's requests failed
            return [RequestRecord(request_id=f"w{k}-{i}", prompt_tokens_target=8, error="HTTP 500")
                    for i in range(per_round)]
        return [RequestRecord(request_id=f"w{k}-{i}", prompt_tokens_target=8, ttft_s=ttfts_ms[k] / 1000)
                for i in range(per_round)]
    return serve_round


def _run(ttfts_ms, rule, per_round=1):
    return asyncio.run(warm_up(_serve(ttfts_ms, per_round), rule))


def test_spread_and_settled():
    assert spread([10.0, 11.0, 12.0]) == pytest.approx(2 / 11)
    assert spread([10.0, None, 12.0]) is None and spread([0.0, 0.0]) is None
    assert settled([50.0, 10.0, 10.5, 11.0], 3, 0.1) and not settled([50.0, 10.0, 10.5, 11.0], 4, 0.1)
    assert not settled([10.0, 10.0], 3, 0.1)


def test_it_stops_once_the_drift_has_ended():
    """TTFT falls 60 -> 16 ms over seven rounds, then stays: the first window of three within 10 %
    is the first one after the drift, and the rule stops there, not before."""
    drift = [60.0, 40.0, 30.0, 24.0, 20.0, 18.0, 16.0]
    seq = drift + [16.0] * 20
    rule = WarmupRule(min_requests=1, max_requests=30, window=3, tolerance=0.1)
    records, result = _run(seq, rule)
    assert result.settled is True
    # windows ending at rounds 2..6 still hold the drift (spread > 10 %); the one ending at round 8 does not
    assert all(spread(seq[k - 2:k + 1]) > 0.1 for k in range(2, 7))
    assert result.rounds == 9 and result.requests == 9 and len(records) == 9
    assert result.values_ms[-3:] == pytest.approx([16.0, 16.0, 16.0])
    assert "settled after 9 requests" in result.note()


def test_it_stops_at_the_bound_when_it_never_settles_and_says_so():
    """A TTFT that keeps falling 12 % per round never agrees within 20 % over three rounds."""
    seq = [100.0 * 0.88 ** k for k in range(50)]
    rule = WarmupRule(min_requests=2, max_requests=10, window=3, tolerance=0.2)
    records, result = _run(seq, rule)
    assert result.settled is False and result.requests == 10 and len(records) == 10
    assert result.note().startswith("did not settle within 10 requests")
    d = result.as_dict()
    assert d["settled"] is False and d["requests"] == 10 and d["rounds"] == 10
    assert len(d["ttft_ms_per_round"]) == 10 and "within 20%" in d["rule"]


def test_the_least_is_always_sent_and_rounds_count_their_requests():
    flat = [10.0] * 40
    _, result = _run(flat, WarmupRule(min_requests=6, max_requests=20, window=3, tolerance=0.2))
    assert result.settled and result.requests == 6           # steady from the start, but 6 asked for
    _, batched = _run(flat, WarmupRule(min_requests=4, max_requests=32, window=3, tolerance=0.2), per_round=4)
    assert batched.settled and batched.rounds == 3 and batched.requests == 12
    # a round with no successful request cannot be judged steady: the window must pass it
    log = []
    gaps = asyncio.run(warm_up(_serve([10.0, None, 10.0, 10.0, 10.0, 10.0], log=log),
                               WarmupRule(1, 6, window=3, tolerance=0.2)))[1]
    assert gaps.values_ms[1] is None and gaps.settled and gaps.rounds == 5 and log == [0, 1, 2, 3, 4]


def test_warm_up_off_and_the_rule_from_the_config():
    records, result = _run([10.0] * 5, WarmupRule.from_cfg({"warmup_requests": 0, "warmup_max_requests": 16}))
    assert records == [] and result.settled is None and result.note() == "no warm-up (warmup_requests 0)"
    rule = WarmupRule.from_cfg({"warmup_requests": 2})
    assert (rule.min_requests, rule.max_requests, rule.window, rule.tolerance) == (2, 2, 4, 0.2)
    rule = WarmupRule.from_cfg({"warmup_requests": 8, "warmup_max_requests": 4, "warmup_window": 5,
                                "warmup_tolerance": 0.1})
    assert (rule.min_requests, rule.max_requests, rule.window, rule.tolerance) == (8, 8, 5, 0.1)


def test_over_many_noisy_engines_it_stops_after_the_drift_and_not_at_the_bound():
    """300 simulated engines with the default rule (4 rounds within 20 %): TTFT falls 40 % per round
    (each drifting round 1.4 x the next) for d = 1..8 rounds, then holds its steady value, with 4 %
    lognormal noise throughout. No engine is called settled while a drifting round is in the
    window it judged, none runs to the bound, and on average it stops within half a round of the
    earliest possible stop (the drift's end + the window)."""
    rng = np.random.default_rng(7)
    rule = WarmupRule(min_requests=1, max_requests=40)
    early = unsettled = late_rounds = 0
    for _ in range(300):
        d = int(rng.integers(1, 9))
        trend = [10.0 * 1.4 ** (d - k) if k < d else 10.0 for k in range(60)]
        seq = [t * math.exp(rng.normal(0.0, 0.04)) for t in trend]
        _, result = _run(seq, rule)
        unsettled += not result.settled
        early += result.rounds - rule.window < d       # the judged window starts inside the drift
        late_rounds += result.rounds - (d + rule.window)
    assert early == 0 and unsettled == 0
    assert late_rounds / 300 < 0.5


def test_a_drift_slower_than_the_rule_resolves_passes_for_steady():
    """The stated limit: over ``window`` rounds a drift of d per round spreads (window - 1) x d, so
    one slower than tolerance / (window - 1) per round (6.7 % by default) is called steady. Here
    3 % per round, noiseless: settled at the first window, although it goes on falling."""
    seq = [100.0 * 0.97 ** k for k in range(40)]
    _, result = _run(seq, WarmupRule(min_requests=1, max_requests=40))
    assert result.settled and result.rounds == 4


def test_warm_session_serves_rounds_through_the_session_and_keeps_the_result():
    class Session:
        def __init__(self):
            self.warmups, self.calls = [], []

        async def run_requests(self, requests, max_concurrency=None, desc=""):
            self.calls.append((len(requests), max_concurrency))
            return [RequestRecord(request_id=r.request_id, prompt_tokens_target=4, ttft_s=0.01) for r in requests], 0.1

    from context_research.records import GenerationRequest

    session = Session()
    records, summary = asyncio.run(warm_session(
        session, lambda k: [GenerationRequest(request_id=f"w{k}-{i}", prompt=[1, 2], max_tokens=2) for i in range(2)],
        WarmupRule(min_requests=2, max_requests=16, window=3, tolerance=0.2), max_concurrency=8, label="e2"))
    assert summary["label"] == "e2" and summary["settled"] and summary["requests"] == 6 and len(records) == 6
    assert session.calls == [(2, 8)] * 3 and session.warmups == [summary]
