"""``python -m context_research.result_tables > docs/columns.md``: the glossary of the catalog's tables.

A module of its own, above the catalog: the package it belongs to imports no experiment.
"""

import sys

from ..experiments.catalog import EXPERIMENTS
from . import glossary_markdown

sys.stdout.write(glossary_markdown(EXPERIMENTS))
