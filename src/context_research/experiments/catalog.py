"""Every experiment of the suite, from explicit imports of their declarations.

Adding an experiment: write its module (ending in ``EXPERIMENT = Experiment(...)``), import it
here, and add ``workflow/rules/<name>.smk``. ``tests/unit/test_catalog.py`` holds the CLI, the
packet, the config schema and the rules in agreement with this mapping.
"""

from __future__ import annotations

from . import e0, e1, e2, e3, e4, e5, e6
from .declaration import Experiment, lookup

EXPERIMENTS: dict[str, Experiment] = {m.EXPERIMENT.name: m.EXPERIMENT for m in (e0, e1, e2, e3, e4, e5, e6)}


def get(name: str) -> Experiment:
    """The declaration of ``name``; an unknown name gets an error listing the known ones."""
    return lookup(EXPERIMENTS, name)
