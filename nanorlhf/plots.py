"""Matplotlib figures for the stages and the report: titled, labelled axes, legends. Nothing else."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from nanorlhf.files import atomic_write

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def line_plots(path, title: str, xlabel: str, panels) -> None:
    """One figure with a panel per (ylabel, [(xs, ys, label), ...]); saved atomically as PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for xs, ys, label in lines:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 12 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def save(fig, path) -> None:
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
