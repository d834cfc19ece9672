"""The trace format E2 replays, and the project's own seeded example trace."""

from pathlib import Path

import pytest

from context_research.errors import ConfigError
from context_research.traces import example_trace, main, read_trace, trace_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_example_trace_is_seeded_long_tailed_and_round_trips(tmp_path):
    trace = example_trace(seed=0, requests=200)
    assert trace == example_trace(seed=0, requests=200) != example_trace(seed=1, requests=200)
    inputs = sorted(t.input_tokens for t in trace)
    median, p95 = inputs[len(inputs) // 2], inputs[int(0.95 * len(inputs))]
    assert p95 > 3 * median                                  # a long tail of long prompts
    assert all(16 <= t.input_tokens <= 1600 and 2 <= t.output_tokens <= 128 for t in trace)
    offsets = [t.arrival_offset_s for t in trace]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    path = tmp_path / "t.jsonl"
    path.write_text(trace_jsonl(trace))
    assert read_trace(path) == trace


def test_shipped_example_is_what_the_generator_writes(capsys):
    main(["--seed", "0", "--requests", "48", "--rate", "2"])
    assert capsys.readouterr().out == (REPO / "config/traces/example.jsonl").read_text()


def test_malformed_trace_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_offset_s": 0, "input_tokens": 8, "output_tokens": 2}\n{"arrival_offset_s": 1}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_trace(path)
    path.write_text('{"arrival_offset_s": -1, "input_tokens": 8, "output_tokens": 2}\n')
    with pytest.raises(ConfigError, match="negative offset"):
        read_trace(path)
