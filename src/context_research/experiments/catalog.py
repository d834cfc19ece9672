"""Every experiment of the suite, from explicit imports of their declarations.

Adding an experiment is five things: its module (ending in ``EXPERIMENT = Experiment(...)``,
which declares its tables, comparison layout, row checks and code), its report module, its
config schema (``workflow/schemas/experiments/<name>.schema.yaml``), its figure captions
(``workflow/report/``) and one line here. The Snakemake rules, the CLI, the packet, the config
schema's experiment list, the glossary, ``compare`` and ``recheck`` all read this mapping;
``tests/unit/test_catalog.py`` holds them in agreement with it.
"""

from __future__ import annotations

from . import e0, e1, e2, e3, e4, e5, e6
from .declaration import Experiment, lookup

EXPERIMENTS: dict[str, Experiment] = {m.EXPERIMENT.name: m.EXPERIMENT for m in (e0, e1, e2, e3, e4, e5, e6)}


def get(name: str) -> Experiment:
    """The declaration of ``name``; an unknown name gets an error listing the known ones."""
    return lookup(EXPERIMENTS, name)
