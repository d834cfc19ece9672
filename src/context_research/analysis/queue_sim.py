"""Simulated servers of known capacity, to prove the capacity search (``tests/unit/test_calibration.py``).

A simulated server is a FIFO queue in front of ``slots`` identical servers (requests served at
once). Each request's service time (``service_s`` on average: deterministic or exponential) is
its prefill (``prefill_share`` of it) then its decode; a request's

* TTFT = its wait in the queue + its prefill;
* TPOT = its decode / (output_tokens - 1);
* E2E = its wait + its service.

A server may DRIFT: its service time starts ``boost`` times shorter when a probe begins (an idle
engine: clocks boosted, caches cold) and rises linearly to ``service_s`` over the first
``settle_s`` seconds of the probe, then stays there. Every probe starts from an empty queue, as a
real probe starts once the previous one has drained.

**The true capacity** of a server is the highest Poisson arrival rate whose LONG-RUN share of
requests meeting both SLOs is at least the attainment target (``true_capacity``): the rate where
the stationary SLO attainment, decreasing in the rate, crosses the target. It is computed
analytically, not simulated: for one deterministic server (M/D/1) from Erlang's waiting-time
distribution, for ``slots`` exponential servers (M/M/c) from Erlang C (the wait is 0 with
probability 1 - C, else exponential with rate c mu - lambda), and for a drifting server from the
server it settles to (the long run never sees the boost). ``long_run_attainment`` states it for
any rate; a test checks it against a long simulation.

``simulate`` serves the probes of many searches at once (one row per search, numpy across rows);
``calibrate`` runs one ``CapacitySearch`` per seed through the real ``probe_verdict`` and returns a
row per seed; ``python -m context_research.analysis.capacity_evidence`` writes the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import integrate, optimize

from .capacity import search_from_config
from .latency import poisson_schedule
from .probe import (FAIL, PASS, ProbeRules, ProbeSample, Verdict, probe_requests, probe_schedule,
                    probe_verdict)


@dataclass(frozen=True)
class SimServer:
    name: str
    service_s: float  # mean service time (prefill + decode) once settled
    slots: int = 1
    exponential: bool = False  # exponential service times (M/M/c); else deterministic (M/D/1)
    prefill_share: float = 0.1
    output_tokens: int = 32
    boost: float = 1.0  # drift: service time / boost at a probe's start ...
    settle_s: float = 0.0  # ... rising linearly to service_s over this many seconds

    def __post_init__(self):
        if not self.exponential and self.slots != 1:
            raise ValueError("a deterministic server has one slot (M/D/1): long_run_attainment has no M/D/c")
        if not (self.service_s > 0 and self.slots >= 1 and 0 < self.prefill_share < 1 and self.output_tokens >= 2
                and self.boost >= 1 and self.settle_s >= 0):
            raise ValueError(f"invalid simulated server: {self!r}")

    @property
    def service_rate_rps(self) -> float:
        """Requests per second the settled server completes when always busy (slots / service_s)."""
        return self.slots / self.service_s

    def scaled(self, factor: float) -> "SimServer":
        """The same server with every service time ``factor`` times longer."""
        return replace(self, service_s=self.service_s * factor)

    def label(self) -> str:
        kind = f"M/M/{self.slots}" if self.exponential else "M/D/1"
        drift = f", service {self.boost:g}x faster at a probe's start, settling over {self.settle_s:g} s" \
            if self.boost > 1 else ""
        return f"{kind}, mean service {self.service_s * 1000:g} ms{drift}"


# -- the truth -----------------------------------------------------------------------------------

def _md1_wait_cdf(t: float, rate: float, d: float) -> float:
    """P(wait <= t) in an M/D/1 queue (Erlang):
    (1 - rho) sum over k <= t/d of (lambda (k d - t))^k / k! e^(-lambda (k d - t))."""
    if t < 0:
        return 0.0
    rho = rate * d
    total = sum((rate * (k * d - t)) ** k / math.factorial(k) * math.exp(-rate * (k * d - t))
                for k in range(int(math.floor(t / d)) + 1))
    return min(1.0, max(0.0, (1 - rho) * total))


def _erlang_c(c: int, offered: float) -> float:
    """Erlang C: the probability that an arrival waits, ``offered`` = lambda / mu < c."""
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= offered / k
        total += term
    last = term * offered / c / (1 - offered / c)
    return last / (total + last)


def long_run_attainment(server: SimServer, rate: float, ttft_slo_ms: float, tpot_slo_ms: float) -> float:
    """The stationary share of requests meeting both SLOs at Poisson rate ``rate`` (0 when unstable)."""
    if rate >= server.service_rate_rps:
        return 0.0
    ttft, tpot, s, p = ttft_slo_ms / 1000.0, tpot_slo_ms / 1000.0, server.service_s, server.prefill_share
    s_max = tpot * (server.output_tokens - 1) / (1 - p)  # the longest service meeting the TPOT SLO
    if not server.exponential:
        return _md1_wait_cdf(ttft - p * s, rate, s) if s <= s_max else 0.0
    mu, c = 1.0 / s, server.slots
    wait_c, theta = _erlang_c(c, rate / mu), c * mu - rate
    upper = min(s_max, ttft / p)
    value, _ = integrate.quad(lambda x: mu * math.exp(-mu * x) * (1 - wait_c * math.exp(-theta * (ttft - p * x))),
                              0.0, upper)
    return value


def true_capacity(server: SimServer, ttft_slo_ms: float, tpot_slo_ms: float, target: float) -> float:
    """The highest rate whose long-run attainment is at least ``target`` (module docstring)."""
    top = server.service_rate_rps * (1 - 1e-9)
    f = lambda r: long_run_attainment(server, r, ttft_slo_ms, tpot_slo_ms) - target  # noqa: E731
    if f(top * 1e-6) < 0:
        return 0.0
    return optimize.brentq(f, top * 1e-6, top, xtol=1e-10, rtol=1e-10)


# -- the simulation ------------------------------------------------------------------------------

def simulate(server: SimServer, arrivals: np.ndarray, rng: np.random.Generator,
             scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Serve rows of arrival times (s from each probe's start, sorted; +inf pads a short row) and
    return per request: ``wait``, ``service``, ``ttft``, ``tpot``, ``done`` (s; inf for padding).
    ``scale``: a service-time factor per row (a row's server is ``server.scaled(factor)``)."""
    rows, n = arrivals.shape
    base = rng.exponential(server.service_s, size=(rows, n)) if server.exponential \
        else np.full((rows, n), server.service_s)
    if scale is not None:
        base = base * np.asarray(scale, dtype=float)[:, None]
    free = np.zeros((rows, server.slots))
    start = np.empty((rows, n))
    service = np.empty((rows, n))
    idx = np.arange(rows)
    for i in range(n):
        slot = free.argmin(axis=1) if server.slots > 1 else np.zeros(rows, dtype=int)
        begin = np.maximum(arrivals[:, i], free[idx, slot])
        s = base[:, i] * _drift(server, begin)
        free[idx, slot] = begin + s
        start[:, i], service[:, i] = begin, s
    pad = ~np.isfinite(arrivals)
    wait = np.where(pad, np.inf, start - np.where(pad, 0.0, arrivals))
    return {"wait": wait, "service": service, "ttft": wait + server.prefill_share * service,
            "tpot": (1 - server.prefill_share) * service / (server.output_tokens - 1),
            "done": np.where(pad, np.inf, start + service)}


def _drift(server: SimServer, t: np.ndarray) -> np.ndarray:
    """Service-time multiplier at time ``t`` of a probe: 1 / boost rising to 1 over settle_s."""
    if server.boost == 1.0:
        return np.ones_like(t)
    frac = np.clip(t / server.settle_s, 0.0, 1.0) if server.settle_s > 0 else np.ones_like(t)
    return 1.0 / server.boost + (1.0 - 1.0 / server.boost) * frac


# -- searches driven by a simulated server -------------------------------------------------------

SPREAD = 16  # server speeds per calibration, spread evenly (log scale) over one doubling


def _probe(rule: str, rate: float, rules: ProbeRules, cfg: dict[str, Any], seed: int,
           length: float = 1.0) -> np.ndarray:
    """The planned send offsets of one probe: the current rule's (``probe.probe_schedule``), or
    bf77132's (``old``: max(requests_per_probe, rate x ttft_slo / rel_tol) requests, plain Poisson)."""
    if rule == "old":
        n = max(int(cfg.get("capacity_requests_per_probe") or cfg["requests_per_point"]),
                math.ceil(rate * cfg["ttft_slo_ms"] / 1000.0 / cfg["capacity_rel_tol"]))
        return np.asarray(poisson_schedule(n, rate, seed))
    return np.asarray(probe_schedule(probe_requests(rate, rules, length), rate, seed, rules.trim))


def _verdict(rule: str, planned: np.ndarray, out: dict[str, np.ndarray], rate: float, rules: ProbeRules) -> Verdict:
    met = (out["ttft"] * 1000.0 <= rules.ttft_slo_ms) & (out["tpot"] * 1000.0 <= rules.tpot_slo_ms)
    if rule == "old":  # bf77132: pass iff the share of all the probe's requests meeting the SLOs >= target
        share = float(met.mean())
        return Verdict(PASS if share >= rules.attainment_target else FAIL, "old rule", attainment=share)
    slack = np.fmax(out["ttft"] * 1000.0 / rules.ttft_slo_ms, out["tpot"] * 1000.0 / rules.tpot_slo_ms)
    return probe_verdict(ProbeSample(planned, planned, out["done"], met, slack), rate, rules)


def calibration_servers(cfg: dict[str, Any]) -> list[SimServer]:
    """The servers E2's settings ``cfg`` are proven on, in units of its TTFT SLO T: one request at a
    time for T / 10 (M/D/1); four at a time for 0.4 T on average, exponentially spread (M/M/4);
    the M/D/1 server 1.5x faster at a probe's start, settling over 8 T (drift)."""
    t, tokens = cfg["ttft_slo_ms"] / 1000.0, cfg["max_tokens"]
    return [SimServer("M/D/1", t / 10, output_tokens=tokens),
            SimServer("M/M/4", 0.4 * t, slots=4, exponential=True, output_tokens=tokens),
            SimServer("drift", t / 10, boost=1.5, settle_s=8 * t, output_tokens=tokens)]


def calibrate(server: SimServer, cfg: dict[str, Any], seeds: int, *, rule: str = "new", first_seed: int = 0,
              spread: int = SPREAD) -> list[dict[str, Any]]:
    """One capacity search per seed against ``server`` with E2's settings ``cfg`` (``rule`` "old":
    bf77132's search and probe rule); the searches run in lockstep, their probes served together
    (``simulate``). Seed k's server is ``server`` with service times 2^((k mod spread) / spread)
    times longer, so the true capacities spread evenly (log scale) over one doubling and do not
    sit at one place among the rates the search probes. A row per seed: the search's result, its
    server's truth, whether it holds the truth, and its seconds of probing."""
    rules = ProbeRules.from_config(cfg)
    factors = 2.0 ** (np.arange(spread) / spread)
    truths = np.array([true_capacity(server.scaled(f), rules.ttft_slo_ms, rules.tpot_slo_ms, rules.attainment_target)
                       for f in factors])
    which = (first_seed + np.arange(seeds)) % spread
    searches = [search_from_config(cfg) for _ in range(seeds)]
    for search in searches:
        search.confirm = rule != "old"
    rng = np.random.default_rng([first_seed, seeds, spread])
    busy = np.zeros(seeds)
    step = 0
    while active := [(i, nxt) for i, s in enumerate(searches) if (nxt := s.next_probe()) is not None]:
        plans = [_probe(rule, r, rules, cfg, 1_000_003 * step + first_seed + i, length) for i, (r, length) in active]
        arrivals = np.full((len(plans), max(len(p) for p in plans)), np.inf)
        for row, p in enumerate(plans):
            arrivals[row, :len(p)] = p
        out = simulate(server, arrivals, rng, factors[which[[i for i, _ in active]]])
        for row, ((i, (r, length)), p) in enumerate(zip(active, plans)):
            served = {k: v[row, :len(p)] for k, v in out.items()}
            searches[i].record(r, _verdict(rule, p, served, r, rules), length)
            busy[i] += float(served["done"].max())
        step += 1
    return [_row(s.result(), float(truths[w]), cfg["capacity_rel_tol"]) | {"probing_s": float(b)}
            for s, w, b in zip(searches, which, busy)]


def _row(result: dict[str, Any], truth: float, rel_tol: float) -> dict[str, Any]:
    low, high, cap = result["capacity_low_rps"], result["capacity_high_rps"], result["capacity_rps"]
    return {"truth_rps": truth, "capacity_rps": cap, "capacity_low_rps": low, "capacity_high_rps": high,
            "capacity_achieved_rps": result["capacity_achieved_rps"], "probes": result["probes"],
            "stop_reason": result["stop_reason"],
            "within_tolerance": cap is None or cap <= truth * (1 + rel_tol),
            "bracket_holds": low <= truth and (high is None or truth < high)}


def coverage(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Shares of searches whose capacity is at most truth x (1 + rel_tol) and whose bracket holds the truth."""
    caps = [r["capacity_rps"] / r["truth_rps"] for r in rows if r["capacity_rps"] is not None]
    return {"seeds": len(rows), "share_within_tolerance": float(np.mean([r["within_tolerance"] for r in rows])),
            "share_bracket_holds": float(np.mean([r["bracket_holds"] for r in rows])),
            "median_capacity_over_truth": float(np.median(caps)) if caps else float("nan"),
            "median_probes": float(np.median([r["probes"] for r in rows])),
            "median_probing_s": float(np.median([r["probing_s"] for r in rows]))}
