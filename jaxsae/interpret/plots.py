"""PNG plots of an analysis (matplotlib, ``Agg`` backend: no display needed).

Every function takes plain arrays/dicts, writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_density_histogram",
    "plot_training_curves",
    "plot_coverage",
    "plot_amortisation_gap",
    "plot_feature_track",
]

_COLOURS = {"SAE": "#1f77b4", "FISTA": "#9467bd", "neurons": "#ff7f0e", "PCA": "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    _pyplot().close(fig)
    return path


def plot_density_histogram(
    density: Any, path: str | os.PathLike, *, title: str = "Feature density", dpi: int = 100
) -> Path:
    """Histogram of ``log10`` activation density per feature; dead features counted apart.

    Args:
      density: ``(F,)`` fraction of residues where each feature fires.
      path: output PNG.
    """
    plt = _pyplot()
    density = np.asarray(density, np.float64)
    alive = density[density > 0]
    dead = int((density <= 0).sum())
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if alive.size:
        lo = np.floor(np.log10(alive.min()))
        bins = np.linspace(lo, 0, max(10, int(-lo * 8)) + 1)
        ax.hist(np.log10(alive), bins=bins, color=_COLOURS["SAE"])
    ax.set_xlabel("log10 activation density (fraction of residues where the feature fires)")
    ax.set_ylabel("features")
    ax.set_title(f"{title}: {alive.size} alive, {dead} dead of {density.size}")
    return _save(fig, path, dpi)


def plot_training_curves(
    metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, dpi: int = 100
) -> Path:
    """L0 and FVU (and the dead fraction when logged) against the training step.

    Args:
      metrics: records of ``metrics.jsonl`` (each with ``step`` and some of ``l0``, ``fvu``,
        ``dead_frac``); records lacking ``step`` are skipped.
      path: output PNG.
    """
    plt = _pyplot()
    rows = [m for m in metrics if "step" in m]
    keys = [k for k in ("l0", "fvu", "dead_frac") if any(k in m for m in rows)]
    titles = {"l0": "L0 (active features per residue)", "fvu": "FVU", "dead_frac": "dead fraction"}
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.0 * max(len(keys), 1), 3.0))
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, keys, strict=False):
        pts = [(m["step"], m[k]) for m in rows if m.get(k) is not None]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=_COLOURS["SAE"])
        ax.set_xlabel("step")
        ax.set_title(titles[k])
        if k == "fvu":
            ax.set_ylim(bottom=0)
        if k == "dead_frac":
            ax.set_ylim(0, max(0.05, 1.1 * max((m.get(k) or 0) for m in rows)))
    return _save(fig, path, dpi)


def plot_coverage(
    coverage: Mapping[str, Mapping[str, Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str = "Concepts covered (test F1 > 0.5)",
    dpi: int = 100,
) -> Path:
    """Grouped bars: concepts covered per concept category, one bar per method.

    Args:
      coverage: ``{method: {category: {"covered": int, "eligible": int, "mean_f1": float}}}``.
      path: output PNG.
    """
    plt = _pyplot()
    methods = list(coverage)
    cats = list(dict.fromkeys(c for m in methods for c in coverage[m]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) + 2), 3.4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(cats))
    for i, m in enumerate(methods):
        vals = [coverage[m].get(c, {}).get("covered", 0) for c in cats]
        bars = ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            vals,
            width,
            label=m,
            color=_COLOURS.get(m),
        )
        for b, c in zip(bars, cats, strict=True):
            f1 = coverage[m].get(c, {}).get("mean_f1", float("nan"))
            if np.isfinite(f1):
                ax.annotate(
                    f"{f1:.2f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    elig = [max(coverage[m].get(c, {}).get("eligible", 0) for m in methods) for c in cats]
    ax.set_xticks(x, [f"{c}\n({e})" for c, e in zip(cats, elig, strict=True)], fontsize=8)
    ax.set_ylabel("concepts with test F1 > 0.5")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title + "; (n) = concepts scored; labels: mean best F1", fontsize=9)
    # (a fixed place: loc="best" searches for one, and warns when that takes over a second)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, dpi)


def plot_amortisation_gap(
    values: Mapping[str, float], path: str | os.PathLike, *, dpi: int = 100
) -> Path:
    """Encoder vs FISTA on the same decoder: objective and L0 side by side.

    Args:
      values: ``{"encoder_objective", "fista_objective", "encoder_l0", "fista_l0"}`` (means over
        residues; extra keys ignored).
      path: output PNG.
    """
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.5, 3.0))
    names = ["SAE encoder", "FISTA"]
    cols = [_COLOURS["SAE"], _COLOURS["FISTA"]]
    obj = [values["encoder_objective"], values["fista_objective"]]
    l0 = [values["encoder_l0"], values["fista_l0"]]
    a1.bar(names, obj, color=cols)
    a1.set_title("SAE objective on its decoder", fontsize=9)
    a2.bar(names, l0, color=cols)
    a2.set_title("L0 (active features per residue)", fontsize=9)
    for ax, v in ((a1, obj), (a2, l0)):
        for i, y in enumerate(v):
            ax.annotate(f"{y:.3g}", (i, y), ha="center", va="bottom", fontsize=8)
    gap = obj[0] - obj[1]
    fig.suptitle(
        f"Amortisation gap: {gap:.3g} ({100 * gap / max(abs(obj[1]), 1e-12):.1f}% of the optimum)",
        fontsize=10,
        y=1.04,
    )
    return _save(fig, path, dpi)


def plot_feature_track(
    sequence: str,
    activations: Any,
    path: str | os.PathLike,
    *,
    dssp: str | None = None,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """One feature's activation along one protein, with its secondary structure below.

    Args:
      sequence: the protein's residues.
      activations: ``(len(sequence),)`` the feature's activation per residue.
      dssp: optional DSSP string of the same length (helix, strand and coil drawn as bands).
      path: output PNG.
    """
    plt = _pyplot()
    a = np.asarray(activations, np.float64)
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(8, 2.6), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    ax.fill_between(np.arange(a.size), a, step="mid", color=_COLOURS["SAE"], alpha=0.8)
    ax.set_ylabel("activation")
    ax.set_title(title, fontsize=9)
    if dssp and len(dssp) == a.size:
        colours = {"H": "#d62728", "G": "#d62728", "I": "#d62728", "E": "#ffbf00", "B": "#ffbf00"}
        for i, c in enumerate(dssp):
            ax2.axvspan(i - 0.5, i + 0.5, color=colours.get(c, "#dddddd"), lw=0)
        ax2.set_yticks([])
        ax2.set_ylabel("SS", rotation=0, labelpad=12, fontsize=8)
    else:
        ax2.axis("off")
    ax2.set_xlabel("residue (red: helix, yellow: strand, grey: coil)")
    return _save(fig, path, dpi)
