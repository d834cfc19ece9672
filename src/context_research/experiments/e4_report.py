"""E4 figures, table and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.plots import line_plot, stacked_bar
from ..io import read_json, write_text
from ..report import provenance_line
from ..tables import fmt, html_table, markdown_table
from ..quality import beside_speed
from . import e4  # the declaration (its module never imports this one)
from ..quality.tables import E4_BESIDE_SPEED, E4_QUALITY

# quality.csv's columns the report shows, headed by their declared labels and units (E4_QUALITY).
TABLE_COLUMNS = ("benchmark", "task", "context_tokens", "n_ok", "metric", "score", "mean_input_tokens", "truncated",
                 "status", "meaningful", "data_source", "reason")
NOT_MEANINGFUL = "NOT a quality measurement"


def load(results_dir: Path) -> pd.DataFrame:
    return pd.read_csv(e4.EXPERIMENT.path(results_dir, "quality"))


def row_label(row: pd.Series) -> str:
    ctx = row.get("context_tokens")
    tail = f"@{int(ctx)}" if ctx is not None and not pd.isna(ctx) else ""
    return f"{row['benchmark']}/{row['task']}{tail}"


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["n_ok"] = [f"{a}/{b}" for a, b in zip(out["n_ok"], out["n"])]
    out["context_tokens"] = [("" if pd.isna(v) else str(int(v))) for v in out["context_tokens"]]
    out["metric"] = [f"{m} ({'perplexity' if s == 'perplexity' else '0-100'})"
                     for m, s in zip(out["metric"], out["score_scale"])]
    out["reason"] = out["reason"].fillna("")
    return E4_QUALITY.shown(out, TABLE_COLUMNS)


def _provenance(meta: dict, summary: dict) -> str:
    prov = provenance_line(meta) + "; scored on the client from the served text"
    if not summary.get("meaningful"):
        prov += f"; {NOT_MEANINGFUL} ({summary.get('meaningful_reason')})"
    return prov


def make_figures(results_dir: Path) -> None:
    frame = load(results_dir)
    summary = read_json(e4.EXPERIMENT.path(results_dir, "summary"))
    meta = read_json(e4.EXPERIMENT.path(results_dir, "metadata"))
    prov = _provenance(meta, summary)
    title_tail = "" if summary.get("meaningful") else f" ({NOT_MEANINGFUL})"
    percent = frame[(frame["score_scale"] == "percent") & (frame["benchmark"] != "overall")].copy()
    percent["label"] = [row_label(r) for _, r in percent.iterrows()]
    stacked_bar(percent, "label", ["score"], e4.EXPERIMENT.figure_path(results_dir, "quality"),
                "E4: score per task, 0-100" + title_tail, "score (0-100)", provenance=prov)
    ruler = frame[frame["benchmark"] == "ruler"]
    line_plot(ruler, "context_tokens", ["score"], e4.EXPERIMENT.figure_path(results_dir, "ruler"),
              "E4: RULER score vs context length" + title_tail, "context length (tokens)", "score (0-100)",
              provenance=prov, logx=True, group="task")
    write_text(e4.EXPERIMENT.figure_path(results_dir, "table"), html_table(table_frame(frame), 2))
    joined, joined_prov = beside_speed_frame(results_dir)
    beside_speed.draw(joined, e4.EXPERIMENT.figure_path(results_dir, "beside_speed"),
                      meaningful=bool(summary.get("meaningful")), provenance=f"{prov}; {joined_prov}")


def _sibling(results_dir: Path, exp: Any, key: str) -> tuple[pd.DataFrame | None, str]:
    """Another declared experiment's table beside E4's results (``results/<name>/``), and a note of
    its run."""
    name = exp.name
    path = exp.path(Path(results_dir).parent / name, key)
    if not path.is_file():
        return None, f"{name.upper()} not run"
    meta_path = exp.path(Path(results_dir).parent / name, "metadata")
    run_id = read_json(meta_path).get("run_id") if meta_path.is_file() else None
    return pd.read_csv(path), f"{name.upper()} run {run_id or 'unknown'}"


def beside_speed_frame(results_dir: Path) -> tuple[pd.DataFrame, str]:
    """E4's quality by length joined with E1 latency and E5 memory at the same lengths, and where
    the E1 and E5 numbers came from."""
    from . import e1, e5  # E4's figure_joins; not the catalog, which imports this module's experiment

    by_length = pd.read_csv(e4.EXPERIMENT.path(results_dir, "by_length"))
    e1_frame, e1_note = _sibling(results_dir, e1.EXPERIMENT, "latency")
    e5_frame, e5_note = _sibling(results_dir, e5.EXPERIMENT, "memory")
    return beside_speed.join_by_length(by_length, e1_frame, e5_frame), f"{e1_note}; {e5_note}"


def _fmt(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.{nd}f}"


def _context(row: pd.Series) -> str:
    ctx = row.get("context_tokens")
    return "no length" if ctx is None or pd.isna(ctx) else f"{int(ctx)} tokens"


def report_section(results_dir: Path) -> dict[str, Any]:
    s = read_json(e4.EXPERIMENT.path(results_dir, "summary"))
    frame = load(results_dir)
    overall = frame[frame["benchmark"] == "overall"].iloc[0]
    tasks = frame[frame["benchmark"] != "overall"]
    ppl = tasks[tasks["score_scale"] == "perplexity"]
    by_bench = tasks.groupby("benchmark", sort=False)["n"].sum()
    findings = []
    if not s["meaningful"]:
        findings.append(f"{NOT_MEANINGFUL}: {s['meaningful_reason']}. The pipeline (data, prompts, truncation, "
                        "decoding, scoring) ran end to end on the engine; the scores below only show that.")
    findings += [
        f"{int(overall['n'])} samples over {len(tasks)} task datasets "
        f"({', '.join(f'{b} {int(n)}' for b, n in by_bench.items())}); {int(overall['n_failed'])} failed; "
        f"{int(overall['truncated'])} prompt(s) truncated in the middle to fit the window.",
        f"Macro mean of the 0-100 task scores: {_fmt(overall['score'])}."
    ]
    if len(ppl):
        findings.append("PG19 perplexity of the same scored window by preceding context: " + "; ".join(
            f"{_context(r)}: {_fmt(r['score'])} ({_fmt(r.get('bits_per_token'), 3)} bits/token)"
            for _, r in ppl.sort_values("context_tokens").iterrows()) + ".")
    fixtures = tasks[tasks["data_source"] == "fixture"]
    if len(fixtures):
        findings.append(f"{len(fixtures)} task(s) ran on the project's fixtures (tests/fixtures/e4), small files in "
                        "the benchmarks' schema, not the benchmarks: point experiments.e4.benchmarks.* at the "
                        "real data (docs/e4-datasets.md) for benchmark numbers.")
    if s["prompt_tokens_mismatch"]:
        findings.append(f"{len(s['prompt_tokens_mismatch'])} prompt(s) where the server's token count differs "
                        "from ours (tokenizer or chat template mismatch).")
    dec = s["decoding"]
    facts = [
        ("decoding", f"upstream prompts; chat template where upstream applies one, thinking off; temperature "
                     f"{dec['temperature']}, stop at EOS, upstream per-task max_new_tokens; answer prefix "
                     f"prefilled: {dec['prefill_answer_prefix']}"),
        ("prompt budget", f"max_model_len {dec['max_model_len']} - max_new_tokens"
                          + (f", capped at {dec['max_input_tokens']}" if dec.get("max_input_tokens") else "")),
        ("PG19 perplexity", s["perplexity_method"]),
        ("datasets (manifest sha256 over all)", s["dataset_manifest_sha256"][:16]),
        ("data sources", ", ".join(f"{b}: {'+'.join(sorted(set(g)))}" for b, g in
                                   tasks.groupby("benchmark", sort=False)["data_source"])),
        ("scores measured on", s["measured_on"]["scores"]),
        ("wall time generate / perplexity (s, client)",
         f"{_fmt(s['generate_duration_s'])} / {_fmt(s['perplexity_duration_s'])}"),
    ]
    tables = [{"caption": "Per-task quality" + ("" if s["meaningful"] else f" ({NOT_MEANINGFUL})"),
               "html": html_table(table_frame(frame), 2), "markdown": markdown_table(table_frame(frame), 2)}]
    if e4.EXPERIMENT.path(results_dir, "by_length").is_file():
        joined, joined_prov = beside_speed_frame(results_dir)
        tables.append({"caption": "Quality beside speed at the same context length (" + joined_prov + ")"
                                  + ("" if s["meaningful"] else f"; quality {NOT_MEANINGFUL}"),
                       "html": html_table(E4_BESIDE_SPEED.shown(joined), 2),
                       "markdown": markdown_table(E4_BESIDE_SPEED.shown(joined), 2)})
    return {"findings": findings, "facts": facts, "tables": tables}


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: the overall score, flagged when not meaningful."""
    s = read_json(e4.EXPERIMENT.path(results_dir, "summary"))
    frame = load(results_dir)
    overall = frame[frame["benchmark"] == "overall"]
    score = fmt(overall.iloc[0]["score"], 1) if len(overall) else "n/a"
    return {"figures": [("overall score (0-100)", score),
                        ("meaningful", "yes" if s["meaningful"] else f"no: {s['meaningful_reason']}")]}
