"""matplotlib setup shared by every figure: headless backend, SVG, provenance in the title."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Byte-stable SVGs: no random ids or dates in the output.
matplotlib.rcParams["svg.hashsalt"] = "context-research"
matplotlib.rcParams["svg.fonttype"] = "none"


def new_figure(title: str, provenance: str, size=(7.0, 4.2)):
    fig, ax = plt.subplots(figsize=size)
    fig.suptitle(title, fontsize=11)
    ax.set_title(provenance, fontsize=7.5, color="#555")
    ax.grid(True, alpha=0.3)
    return fig, ax


def close(fig) -> None:
    plt.close(fig)
