"""What an experiment is, declared once: name, title, engines, body, files, figures, report.

Each experiment module ends with ``EXPERIMENT = Experiment(...)``; ``catalog`` collects them.
The CLI, the packet, the config schema's experiment list and the Snakemake rules all read these
declarations, so an experiment's name, files and captions are typed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

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
    report: ModuleType  # make_figures(results_dir) and report_section(results_dir)
    # Keys of experiments.<name> used only to analyse saved records (SLOs, tolerances, thresholds).
    analysis_keys: tuple[str, ...] = ()
    # The analysis step, analyse(results_dir, analysis_cfg): from the run's saved records and the
    # analysis keys it writes ``analysis_outputs`` (rule eN_analysis). Only an experiment that has
    # one leaves its analysis keys out of the run's hash; without it they stay run keys (E3), since
    # nothing else would recompute the numbers they change.
    analyse: Callable[[Path, dict], Any] | None = None
    analysis_outputs: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[dict], Prepared] | None = None
    # Files a run writes only sometimes or in a configured number (E6's fallback engine log, E0's
    # restart logs, a name with "{}" filled by ``path(key, n)``): addressable by key, but not rule
    # outputs, since Snakemake would call a run that skipped them failed.
    optional_outputs: dict[str, str] = field(default_factory=dict)
    # Files the run reads besides the model (E4: its materialized datasets), from the config.
    data_inputs: Callable[[dict], list[str]] | None = None
    # Experiments whose results this one's figures join when they are in the report (E4: E1, E5).
    figure_joins: tuple[str, ...] = ()
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

    @property
    def files(self) -> dict[str, str]:
        """Every file the run rule writes, by key: the body's outputs and the run's own files."""
        return {**self.outputs, **RUN_FILES}

    @property
    def all_files(self) -> dict[str, str]:
        """``files`` plus the optional and the analysis outputs: every file of the experiment, by key."""
        return {**self.files, **self.optional_outputs, **self.analysis_outputs}

    @property
    def separated_analysis_keys(self) -> tuple[str, ...]:
        """The analysis keys left out of the run's config and hash: those an analysis step reads."""
        return self.analysis_keys if self.analyse else ()

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


class UnknownExperimentError(ConfigError):
    pass


def lookup(experiments: dict[str, Experiment], name: str) -> Experiment:
    try:
        return experiments[name]
    except KeyError:
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; known experiments: {', '.join(sorted(experiments))}") from None
