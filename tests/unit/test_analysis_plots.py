import math
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from context_research.analysis.plots import line_plot, stacked_bar

PROV = "real vLLM 0.32.0 CPU, random-embedded weights, client-side"


def _assert_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = path.read_text(encoding="utf-8")
    assert PROV in text
    return text


def test_line_plot_with_missing_values(tmp_path):
    df = pd.DataFrame({"prompt_tokens": [1024, 4096, 8192, 16384],
                       "ttft_ms_p50": [37.9, None, 219.0, float("nan")],
                       "tpot_ms_p50": [5.01, 5.13, "n/a", 5.45],
                       "cfg": ["a", "a", "b", "b"]})
    out = line_plot(df, "prompt_tokens", ["ttft_ms_p50", "tpot_ms_p50", "missing_col"], tmp_path / "e1.svg",
                    "TTFT vs prompt length", "prompt tokens", "ms", provenance=PROV, logx=True, logy=True)
    text = _assert_svg(out)
    assert "TTFT vs prompt length" in text
    assert not list(tmp_path.glob(".*.tmp"))
    _assert_svg(line_plot(df, "prompt_tokens", ["ttft_ms_p50"], tmp_path / "g.svg", "t", "x", "y",
                          provenance=PROV, group="cfg"))


def test_line_plot_no_data(tmp_path):
    df = pd.DataFrame({"x": [1, 2], "y": [None, math.nan]})
    text = _assert_svg(line_plot(df, "x", ["y"], tmp_path / "empty.svg", "t", "x", "y", provenance=PROV))
    assert "no data" in text
    _assert_svg(line_plot(pd.DataFrame(), "x", ["y"], tmp_path / "empty2.svg", "t", "x", "y", provenance=PROV))


def test_stacked_bar(tmp_path):
    df = pd.DataFrame({"config": ["util 0.9", "util 0.5"], "weights_gib": [15.27, 15.27],
                       "non_torch_gib": [0.22, -3.58], "kv_cache_allocated_gib": [108.74, None],
                       "cuda_graph_gib": [None, None]})
    out = stacked_bar(df, "config", ["weights_gib", "non_torch_gib", "kv_cache_allocated_gib", "cuda_graph_gib",
                                     "absent"], tmp_path / "sub" / "e5.svg", "Memory components", "GiB",
                      provenance=PROV)
    text = _assert_svg(out)
    assert "kv_cache_allocated_gib" in text and "cuda_graph_gib" not in text


def test_provenance_required(tmp_path):
    df = pd.DataFrame({"x": [1], "y": [2]})
    with pytest.raises(ValueError, match="provenance"):
        line_plot(df, "x", ["y"], tmp_path / "p.svg", "t", "x", "y", provenance=" ")
    with pytest.raises(TypeError):
        stacked_bar(df, "x", ["y"], tmp_path / "p.svg", "t", "y")  # provenance is keyword-only and required
    assert not (tmp_path / "p.svg").exists()
