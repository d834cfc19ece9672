"""The capacity search's calibration tables: ``test_calibration.py``'s capacity test with more seeds.

    python -m context_research.analysis.capacity_evidence --seeds 1000 \\
        --out docs/evidence/2026-12-07-cpu-calibration

writes ``capacity_coverage.csv`` (a row per E2 settings, simulated server and search: this
code's, and bf77132's as ``analysis.queue_sim`` reproduces it) and ``capacity_coverage.svg``.
Simulated servers, no engine: the numbers are the method's, not any engine's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..config import load_config  # noqa: E402
from ..io import write_csv, write_figure  # noqa: E402
from ..result_tables import CALIBRATION_CAPACITY  # noqa: E402
from .plots import SVG_RC  # noqa: E402
from .queue_sim import calibrate, calibration_servers, coverage  # noqa: E402

SETTINGS = {"default (CPU)": [], "qwen3-8b": ["config/qwen3-8b.yaml"]}
SEARCHES = {"new": "this code (analysis.probe verdicts)", "old": "bf77132 (attainment >= target, short probes)"}


def coverage_table(seeds: int, root: Path = Path("."), *, experiments: Mapping[str, Any]) -> pd.DataFrame:
    """A row per settings x server x search: the shares test_calibration asserts, with more seeds
    (each settings' config validated against the declared ``experiments``)."""
    rows = []
    for settings, overlays in SETTINGS.items():
        cfg = load_config(root / "config/config.yaml", [root / o for o in overlays],
                          experiments=experiments)["experiments"]["e2"]
        for server in calibration_servers(cfg):
            for rule, search in SEARCHES.items():
                runs = calibrate(server, cfg, seeds, rule=rule)
                c = coverage(runs)
                truths = [r["truth_rps"] for r in runs]
                rows.append({"settings": settings, "server": server.name, "server_model": server.label(),
                             "search": search, "seeds": c["seeds"], "truth_min_rps": min(truths),
                             "truth_max_rps": max(truths), "rel_tol": cfg["capacity_rel_tol"],
                             "share_capacity_within_tolerance": c["share_within_tolerance"],
                             "share_bracket_holds_truth": c["share_bracket_holds"],
                             "median_capacity_over_truth": c["median_capacity_over_truth"],
                             "median_probes": c["median_probes"], "median_probing_s": c["median_probing_s"]})
    return pd.DataFrame(rows)


def coverage_figure(table: pd.DataFrame, path: Path) -> Path:
    """Left: share of searches whose bracket holds the truth (the test's floor: 0.90); right: median
    capacity / truth (up to 1 + rel_tol is what the tolerance test allows)."""
    pairs = list(dict.fromkeys(zip(table["settings"], table["server"])))
    labels = [f"{settings.split(' ')[0]}\n{server}" for settings, server in pairs]
    x = np.arange(len(labels))
    with plt.rc_context(SVG_RC):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
        for k, (search, colour) in enumerate(zip(SEARCHES.values(), ("tab:blue", "tab:gray"))):
            sub = table[table["search"] == search]
            for ax, col in ((left, "share_bracket_holds_truth"), (right, "median_capacity_over_truth")):
                ax.bar(x + (k - 0.5) * 0.4, sub[col], 0.4, color=colour, label=search)
        left.axhline(0.90, color="black", linestyle="--", linewidth=1, label="0.90: the test's floor")
        right.axhspan(1.0, 1.0 + float(table["rel_tol"].iloc[0]), color="tab:red", alpha=0.12,
                      label="above the truth, within rel_tol")
        right.axhline(1.0, color="black", linewidth=1)
        for ax, name in ((left, "share of searches whose bracket\nholds the true capacity"),
                         (right, "median capacity / true capacity")):
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_ylabel(name)
        handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
        names = [n for ax in (left, right) for n in ax.get_legend_handles_labels()[1]]
        keep = dict(zip(names, handles))
        fig.legend(keep.values(), keep.keys(), loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0.04))
        fig.suptitle(f"E2 capacity search against simulated servers of known capacity ({int(table['seeds'].iloc[0])} "
                     "seeds each; default = the CPU settings)")
        fig.text(0.5, 0.005, "simulated queues (analysis.queue_sim), no engine: the method's calibration, not a "
                             "measurement", ha="center", fontsize=8, style="italic")
        fig.subplots_adjust(bottom=0.22, wspace=0.25)
        out = write_figure(path, fig)
        plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="folder for capacity_coverage.csv and .svg")
    args = parser.parse_args(argv)
    from ..experiments.catalog import EXPERIMENTS  # an entry point: it reads the suite's configs

    table = coverage_table(args.seeds, experiments=EXPERIMENTS)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "capacity_coverage.csv", table[list(CALIBRATION_CAPACITY.names)])
    coverage_figure(table, args.out / "capacity_coverage.svg")
    print(table.drop(columns=["server_model"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
