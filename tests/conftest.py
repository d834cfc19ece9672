import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
# Subprocesses (snakemake --list-rules, the CLI) import this checkout's package too, not whichever
# checkout the venv's editable install points at.
_paths = os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.environ.get("PYTHONPATH") else []
if str(REPO / "src") not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *_paths])
