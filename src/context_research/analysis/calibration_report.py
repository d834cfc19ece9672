"""The calibration evidence tables: ``python -m context_research.analysis.calibration_report --out DIR``.

Runs ``analysis.calibration`` with more simulations than the unit tests and writes, into DIR:

* ``interval_coverage.csv``: method, statistic, distribution, n, coverage, withheld (and the
  simulations, how many were stated, the median width relative to the truth, where the configs
  use that n). Rows: the project's intervals (order statistics, bootstrap-t, cluster-robust for
  pooled ITL gaps, batch means for rates) and, for contrast, the percentile bootstrap they replaced
  and a plain Student-t of the mean.
* ``comparison_calibration.csv``: per comparison family, the A/A false-call rate (family-wise), the
  median mde_pct and the power at 1 x and 2 x it.
* ``interval_coverage.svg``: coverage against n per statistic and method, the 92-98 % band shaded.

Seeded: the same arguments give the same files. Minutes on a 2-core host at the defaults.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..io import write_csv, write_figure
from .calibration import (COVERAGE_BAND, DISTRIBUTIONS, QUEUE_MODELS, Bimodal, ComparisonModel, LogNormal,
                          comparison_calibration, config_sample_sizes, interval_coverage, pooled_coverage,
                          rate_coverage)
from .stats import STATS

INTERVAL_COLUMNS = ("method", "statistic", "distribution", "n", "coverage", "withheld", "simulations", "stated",
                    "median_relative_width", "config_uses")
COMPARISON_COLUMNS = ("model", "tests", "alpha", "min_effect", "simulations", "false_call_rate", "median_mde_pct",
                      "power_at_1x_mde", "power_at_2x_mde")
METHODS = {"mean": "bootstrap-t", "p50": "order statistic", "p95": "order statistic", "p99": "order statistic"}
EVIDENCE_DISTRIBUTIONS = (*DISTRIBUTIONS, LogNormal(sigma=0.25, name="lognormal-0.25"),
                          LogNormal(sigma=0.5, name="lognormal-0.5"), Bimodal(weight=0.05, name="bimodal-5%"))
COMPARISON_MODELS = (
    ComparisonModel(),                                            # config/compare-cpu.yaml: 2 runs per side
    ComparisonModel(runs=3),
    ComparisonModel(runs=5),
    ComparisonModel(runs=2, drift_sd=0.3),                        # the CPU host's worst drift (E0: 0.3-0.6)
    ComparisonModel(e0_starts=3, drift_sd=0.05),                  # one run per side, E0's 3 starts of 20
    ComparisonModel(e0_starts=3, e0_requests=320, drift_sd=0.02, requests=5,
                    request_sds=(0.05, 0.01, 0.02, 0.05, 0.01)),  # the H200 profile: tight, E0 of 320
)


def _percentile_bootstrap(x: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, tuple]:
    """The interval the project printed before issue 25 (scipy's percentile bootstrap, requests
    resampled), vectorised: 95 % percentile interval of each statistic, n >= MIN_SAMPLES only."""
    from .stats import MIN_SAMPLES  # noqa: PLC0415

    n = x.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    out = {}
    for s in STATS:
        if n < MIN_SAMPLES[s]:
            out[s] = (np.full(len(x), np.nan), np.full(len(x), np.nan))
            continue
        lows, highs = [], []
        for chunk in np.array_split(x, max(1, len(x) * resamples * n // 4_000_000)):
            boot = chunk[:, idx]
            stat = boot.mean(axis=-1) if s == "mean" else np.percentile(boot, int(s[1:]), axis=-1)
            lo, hi = np.percentile(stat, [2.5, 97.5], axis=1)
            lows.append(lo)
            highs.append(hi)
        out[s] = (np.concatenate(lows), np.concatenate(highs))
    return out


def _student_t(x: np.ndarray) -> dict[str, tuple]:
    from scipy import stats as st  # noqa: PLC0415

    n = x.shape[1]
    m, se = x.mean(axis=1), x.std(axis=1, ddof=1) / math.sqrt(n)
    t = st.t.ppf(0.975, n - 1)
    return {"mean": (m - t * se, m + t * se)}


def interval_rows(sims: int, seed: int, experiments: Mapping[str, Any]) -> list[dict]:
    uses = config_sample_sizes(experiments=experiments)
    rows = []
    for dist in EVIDENCE_DISTRIBUTIONS:
        for n, where in uses.items():
            common = {"distribution": dist.describe(), "config_uses": "; ".join(where)}
            for row in interval_coverage(dist, n, sims, seed + n):
                rows.append({"method": METHODS[row["statistic"]], **row, **common})
            for method, fn, most in (("percentile bootstrap (before issue 25)", _percentile_bootstrap, 64),
                                     ("Student-t (reference)", _student_t, 10 ** 9)):
                if n > most:
                    continue
                for row in interval_coverage(dist, n, min(sims, 1000), seed + n, fn):
                    rows.append({"method": method, **row, **common})
    for groups in (6, 16, 64, 320):
        for row in pooled_coverage(groups, gaps=31, sims=min(sims, 1000), seed=seed + groups):
            rows.append({"method": "cluster-robust (requests as the unit)", **row, "config_uses": ""})
    for model in QUEUE_MODELS:
        row = rate_coverage(model, min(sims, 2000), seed)
        rows.append({"method": "batch means (5 windows)", "statistic": "request throughput",
                     "distribution": row["model"], "n": model.requests, **{k: row[k] for k in (
                         "simulations", "stated", "withheld", "coverage", "median_relative_width")},
                     "config_uses": ""})
    return [{c: r.get(c) for c in INTERVAL_COLUMNS} for r in rows]


def comparison_rows(sims: int, seed: int) -> list[dict]:
    rows = [comparison_calibration(model, sims, seed + k) for k, model in enumerate(COMPARISON_MODELS)]
    return [{c: r[c] for c in COMPARISON_COLUMNS} for r in rows]


def coverage_figure(frame: pd.DataFrame, path: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from .plots import SVG_RC  # noqa: PLC0415

    shown = frame[frame["statistic"].isin(STATS) & frame["coverage"].notna()
                  & frame["distribution"].isin([d.describe() for d in DISTRIBUTIONS])]
    with matplotlib.rc_context(SVG_RC):
        from matplotlib.ticker import NullFormatter  # noqa: PLC0415

        fig, axes = plt.subplots(1, 4, figsize=(15, 4.2), sharey=True, sharex=True)
        try:
            for ax, stat in zip(axes, STATS):
                ax.axhspan(*COVERAGE_BAND, color="#2a9d3a", alpha=0.12, label="92-98 %")
                ax.axhline(0.95, color="black", linewidth=0.6)
                for (method, dist), sub in shown[shown["statistic"] == stat].groupby(["method", "distribution"]):
                    style = "--" if "before" in method else ":" if "reference" in method else "-"
                    ax.plot(sub["n"], sub["coverage"], style, marker="o", markersize=3,
                            label=f"{method}, {dist.split(',')[0].split(':')[0]}")
                ax.set_xscale("log")
                ax.set_xlim(2.5, 400)
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_title(f"{stat}: coverage of the 95 % interval", fontsize=9)
                ax.set_xlabel("n (the configs' sample sizes)", fontsize=8)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=6)
            axes[0].set_ylabel("share of simulations covering the truth (where stated)", fontsize=8)
            axes[0].set_ylim(0.4, 1.0)
            fig.suptitle("Interval coverage on simulated samples of known truth (analysis.calibration); a missing "
                         "point: withheld at that n", fontsize=10)
            fig.tight_layout()
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs and the SVG")
    parser.add_argument("--sims", type=int, default=4000, help="simulations per interval row (rates: at most 2000)")
    parser.add_argument("--comparison-sims", type=int, default=500, help="simulated comparisons per family")
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args(argv)
    from ..experiments.catalog import EXPERIMENTS  # an entry point: it reads the suite's configs

    intervals = pd.DataFrame(interval_rows(args.sims, args.seed, EXPERIMENTS))
    write_csv(args.out / "interval_coverage.csv", intervals)
    coverage_figure(intervals, args.out / "interval_coverage.svg")
    write_csv(args.out / "comparison_calibration.csv", pd.DataFrame(comparison_rows(args.comparison_sims, args.seed)))
    print(f"wrote {args.out}/interval_coverage.csv, interval_coverage.svg, comparison_calibration.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
