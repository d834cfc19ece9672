"""What an experiment is, declared once: name, title, engines, body, files, figures, report.

Each experiment module ends with ``EXPERIMENT = Experiment(...)``; ``catalog`` collects them.
The CLI, the packet, the config schema's experiment list and the Snakemake rules all read these
declarations, so an experiment's name, files and captions are typed in one place.

The declaration names its report module by its dotted path and never imports it: the report
module imports the experiment's module (for its declaration), not the other way round, and
whoever renders (``report``) imports the report module when it draws.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from ..analysis.compare_layout import Layout, NotCompared
from ..columns import Table, find_table
from ..errors import ConfigError

# How many engines a body needs. ONE: the runner starts one engine and hands the body a session.
# SEVERAL: the body asks the run for its engines (E3's three, E6's derived-model passes) and the
# run stops them all, whatever happens.
ONE_ENGINE = "one"
SEVERAL_ENGINES = "several"

RUN_FILES = {"metadata": "run_metadata.json", "gpu_stats": "gpu_stats.json"}


@dataclass(frozen=True)
class Figure:
    """One report artifact of the figures rule: an SVG figure or an HTML table.

    ``caption`` names a file in ``workflow/report/``; Snakemake's report and the packet both
    show that text, so each caption is written once.
    """

    key: str
    file: str
    caption: str

    @property
    def is_svg(self) -> bool:
        return self.file.endswith(".svg")


@dataclass(frozen=True)
class Prepared:
    """What an experiment computes before its engines start (E4: its datasets, loaded and hashed)."""

    dataset_manifest_sha256: str | None = None
    body_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    category: str  # Snakemake report category
    engines: str  # ONE_ENGINE or SEVERAL_ENGINES
    body: Callable[..., Any]
    outputs: dict[str, str]  # rule output key -> file name in results/<name>/ (besides RUN_FILES)
    figures: tuple[Figure, ...]
    # Dotted path of the report module: make_figures(results_dir), report_section(results_dir) and
    # headline(results_dir). Imported by ``report`` when it is used, never by the declaration.
    report_module: str
    # The files its run reads besides ``provenance.SHARED_RUN_CODE``, relative to the package (a
    # folder: every file in it): its modules, the modules only it uses and their data files. The
    # run's hash covers exactly these and the shared code, so an edit elsewhere reruns nothing.
    code: tuple[str, ...]
    # Keys of experiments.<name> used only to analyse saved records (SLOs, tolerances, thresholds):
    # left out of the run's config and hash, passed to the analysis step instead. Declared only
    # with that step (``analyse``): a key no step recomputes from the records is a run key.
    analysis_keys: tuple[str, ...] = ()
    # The analysis step, analyse(results_dir, analysis_cfg): from the run's saved records and the
    # analysis keys it writes ``analysis_outputs`` (rule eN_analysis).
    analyse: Callable[[Path, dict], Any] | None = None
    analysis_outputs: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[dict], Prepared] | None = None
    # Files a run writes only sometimes or in a configured number (E6's fallback engine log, E0's
    # restart logs, a name with "{}" filled by ``path(key, n)``): addressable by key, but not rule
    # outputs, since Snakemake would call a run that skipped them failed.
    optional_outputs: dict[str, str] = field(default_factory=dict)
    # Files the run reads besides the model (E4: its materialized datasets), from the config, and
    # what the rule that makes them runs: its code and data files (E4's prompt templates) and the
    # distributions whose data it uses (``provenance.data_digest``).
    data_inputs: Callable[[dict], list[str]] | None = None
    data_code: tuple[str, ...] = ()
    data_packages: tuple[str, ...] = ()
    # What its figures and report rules run besides its code and ``provenance.REPORT_CODE``: its
    # report module and the figure modules only they use.
    report_code: tuple[str, ...] = ()
    # Experiments whose results this one's figures join when they are in the report (E4: E1, E5).
    figure_joins: tuple[str, ...] = ()
    # Its tables, column by column (``columns.Table``, keyed "<name>/<file>"): one per CSV output,
    # which ``RunContext.write_table`` checks, and the tables its report shows from a summary.
    tables: tuple[Table, ...] = ()
    # What ``context-research compare`` compares of its runs (``analysis.compare_layout``), or why
    # it compares nothing; None: not compared, for no stated reason.
    comparison: Layout | NotCompared | None = None
    # ``context-research recheck``: (output key, check) per point table whose rows
    # ``analysis.integrity`` judges, check(row, gpu, hf_config) -> its verdict ...
    row_checks: tuple[tuple[str, Callable[..., Any]], ...] = ()
    # ... and a re-judgement of the whole results folder with today's verdict (E0: passed), which
    # returns one line per judgement that changed.
    rejudge: Callable[[Path], list[str]] | None = None
    # (config key, message) for each thing its validated block names that no run could use (E4: a
    # data file that cannot be read); ``config.validate_config`` refuses the first before any rule runs.
    config_problems: Callable[[dict], list[tuple[str, str]]] | None = None

    def __post_init__(self):
        if self.engines not in (ONE_ENGINE, SEVERAL_ENGINES):
            raise ValueError(f"{self.name}: engines must be {ONE_ENGINE!r} or {SEVERAL_ENGINES!r}")
        clash = (set(self.outputs) | set(self.optional_outputs) | set(self.analysis_outputs)) & set(RUN_FILES) or (
            set(self.outputs) & (set(self.optional_outputs) | set(self.analysis_outputs))) or (
            set(self.optional_outputs) & set(self.analysis_outputs))
        if bool(self.analyse) != bool(self.analysis_outputs):
            raise ValueError(f"{self.name}: an analysis step and its outputs are declared together")
        if clash:
            raise ValueError(f"{self.name}: output keys {sorted(clash)} are declared twice or reserved for the run's files")
        self._check_tables()
        self._check_code()
        unknown = [key for key, _ in self.row_checks if key not in self.outputs]
        if unknown:
            raise ValueError(f"{self.name}: row checks name no output: {unknown}")

    def _check_code(self) -> None:
        """Run code never names a figures or report module (those feed only the figures and report
        rules); a module of the package that holds the body or the report is declared."""
        if [c for c in self.code if c.endswith(("_report.py", "_figures.py"))]:
            raise ValueError(f"{self.name}: a report or figures module is no run code: {self.code}")
        for module, declared, what in ((self.body.__module__, self.code, "code"),
                                       (self.report_module, self.report_code, "report_code")):
            head, _, rest = module.partition(".")
            if head == "context_research" and rest.replace(".", "/") + ".py" not in declared:
                raise ValueError(f"{self.name}: {what} must name {rest.replace('.', '/')}.py")
        if self.analysis_keys and not self.analyse:
            raise ValueError(f"{self.name}: analysis keys {self.analysis_keys} need an analysis step that "
                             "recomputes what they change from the saved records; without one they are run keys")

    def _check_tables(self) -> None:
        keys = [t.file for t in self.tables]
        if len(set(keys)) != len(keys) or any(not k.startswith(f"{self.name}/") for k in keys):
            raise ValueError(f"{self.name}: table keys must be distinct and start with '{self.name}/': {keys}")
        csvs = {f"{self.name}/{f}" for f in self.all_files.values() if f.endswith(".csv")}
        if csvs - set(keys):
            raise ValueError(f"{self.name}: no table declares {sorted(csvs - set(keys))}")
        stray = {k for k in keys if k.endswith(".csv")} - csvs
        if stray:
            raise ValueError(f"{self.name}: tables {sorted(stray)} name no output of the experiment")

    @property
    def report(self) -> ModuleType:
        """The report module (``report_module``), imported on first use."""
        return importlib.import_module(self.report_module)

    @property
    def files(self) -> dict[str, str]:
        """Every file the run rule writes, by key: the body's outputs and the run's own files."""
        return {**self.outputs, **RUN_FILES}

    @property
    def all_files(self) -> dict[str, str]:
        """``files`` plus the optional and the analysis outputs: every file of the experiment, by key."""
        return {**self.files, **self.optional_outputs, **self.analysis_outputs}

    def table(self, filename: str) -> Table:
        """The declared table of ``results/<name>/<filename>``."""
        return find_table(self.tables, self.name, filename)

    def path(self, results_dir: str | Path, key: str, *name_args: Any) -> Path:
        try:
            return Path(results_dir) / self.all_files[key].format(*name_args)
        except KeyError:
            raise KeyError(f"{self.name} declares no output {key!r}; it declares {', '.join(self.all_files)}") from None

    def figure_path(self, results_dir: str | Path, key: str) -> Path:
        for f in self.figures:
            if f.key == key:
                return Path(results_dir) / f.file
        raise KeyError(f"{self.name} declares no figure {key!r}; it declares {', '.join(f.key for f in self.figures)}")

    def results_dir(self, root: str | Path = "results") -> Path:
        return Path(root) / self.name

    def figure_paths(self, root: str | Path = "results") -> dict[str, str]:
        return {f.key: str(self.results_dir(root) / f.file) for f in self.figures}

    def run_paths(self, root: str | Path = "results") -> dict[str, str]:
        return {k: str(self.results_dir(root) / v) for k, v in self.files.items()}

    def analysis_paths(self, root: str | Path = "results") -> dict[str, str]:
        return {k: str(self.results_dir(root) / v) for k, v in self.analysis_outputs.items()}


def comparison_layouts(experiments: Mapping[str, Experiment]) -> dict[str, Layout | NotCompared]:
    """What ``compare`` receives: each experiment's declared comparison layout (or why it has none)."""
    return {name: exp.comparison for name, exp in experiments.items() if exp.comparison is not None}


class UnknownExperimentError(ConfigError):
    pass


def lookup(experiments: dict[str, Experiment], name: str) -> Experiment:
    try:
        return experiments[name]
    except KeyError:
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; known experiments: {', '.join(sorted(experiments))}") from None
