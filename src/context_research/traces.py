"""Request traces for E2's trace-replay mode: one JSON object a line, ``arrival_offset_s``,
``input_tokens``, ``output_tokens``; the replay sends each request at its offset with an
exact-length token-id prompt.

``example_trace`` makes the project's own example (``config/traces/example.jsonl``): Poisson
arrivals and log-normal lengths, a long tail of long prompts over many short ones, as chat and
RAG traffic has. It is generated, not copied from any public trace:

    python -m context_research.traces --seed 0 --requests 48 --rate 2 > config/traces/example.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class TraceRequest:
    arrival_offset_s: float
    input_tokens: int
    output_tokens: int


def example_trace(seed: int = 0, requests: int = 48, rate_rps: float = 2.0, input_median: int = 192,
                  input_sigma: float = 1.0, input_max: int = 1600, output_median: int = 24,
                  output_sigma: float = 0.6, output_max: int = 128) -> list[TraceRequest]:
    """A seeded trace: exponential gaps at ``rate_rps``, log-normal input and output lengths
    (median, sigma of the log) clipped to [16, max] and [2, max]."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate_rps, requests - 1))])
    inputs = np.clip(np.round(input_median * rng.lognormal(0.0, input_sigma, requests)), 16, input_max)
    outputs = np.clip(np.round(output_median * rng.lognormal(0.0, output_sigma, requests)), 2, output_max)
    return [TraceRequest(round(float(t), 4), int(i), int(o)) for t, i, o in zip(offsets, inputs, outputs)]


def read_trace(path: str | Path) -> list[TraceRequest]:
    """The trace at ``path``, sorted by arrival; a malformed line is a ConfigError naming it."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            req = TraceRequest(float(obj["arrival_offset_s"]), int(obj["input_tokens"]), int(obj["output_tokens"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: not a trace line (arrival_offset_s, input_tokens, output_tokens): "
                              f"{exc}") from None
        if not math.isfinite(req.arrival_offset_s) or req.arrival_offset_s < 0 or req.input_tokens < 1 \
                or req.output_tokens < 1:
            raise ConfigError(f"{path}:{n}: negative offset or a length below 1: {line.strip()}")
        out.append(req)
    if not out:
        raise ConfigError(f"{path}: the trace has no request")
    return sorted(out, key=lambda r: r.arrival_offset_s)


def trace_jsonl(trace: list[TraceRequest]) -> str:
    return "".join(json.dumps({"arrival_offset_s": r.arrival_offset_s, "input_tokens": r.input_tokens,
                               "output_tokens": r.output_tokens}) + "\n" for r in trace)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--rate", type=float, default=2.0, help="mean arrival rate (requests/s)")
    p.add_argument("--input-max", type=int, default=1600)
    args = p.parse_args(argv)
    sys.stdout.write(trace_jsonl(example_trace(args.seed, args.requests, args.rate, input_max=args.input_max)))


if __name__ == "__main__":
    main()
