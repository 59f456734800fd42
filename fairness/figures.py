"""Figures of the audit (matplotlib, no display needed): per-group Dice box plots and the trade-off.

    group_boxplot      per-case Dice of each group (kidney, tumor, mean panels), every case drawn
                       as a dot over its box, n under each group, the group mean as a diamond
    tradeoff_plot      one point per method: mean Dice against SD and against SER, error bars
                       over seeds, the Pareto front joined and its methods ringed. The study's point
                       is that the Dice-best model need not be on the fair side of the front.
    case_slice         one case's axial CT slice through its largest error, window [-79, 304] HU,
                       reference and prediction contours in two colours (the report's gallery)

Usage:
    fig = group_boxplot(per_case, "sex", order=["male", "female"]); fig.savefig("box_sex.png")
    fig = tradeoff_plot(compare, "sex"); fig.savefig("tradeoff_sex.png")
    fig, z = case_slice(ct_hu, reference, prediction, spacing, title="case_00012: Dice 41.2")
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from fairness.grouping import group_order
from fairness.metrics import DICE, get_metric
from fairness.report import pareto_front


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: works on headless machines and inside DataLoader workers
    import matplotlib.pyplot as plt
    return plt


def group_boxplot(per_case: pd.DataFrame, group_col: str, *, order: Sequence[Hashable] | None = None,
                  title: str = "", metric=DICE):
    """per_case holds `metric`'s values under kidney / tumor / mean (fairness.metrics.metric_view)."""
    plt = _pyplot()
    metric_info = get_metric(metric)
    groups = group_order(per_case[group_col], order=order)
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.6 * len(groups) * 1.5, 4), sharey=True)
    rng = np.random.default_rng(0)  # dot jitter only; fixed so the picture is reproducible
    for ax, metric in zip(axes, ("kidney", "tumor", "mean")):
        data = [metric_info.scale * per_case.loc[per_case[group_col] == g, metric].dropna().to_numpy() for g in groups]
        positions = np.arange(1, len(groups) + 1)
        ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.55,
                   showfliers=False, medianprops={"color": "black"})
        for pos, values in zip(positions, data):
            ax.scatter(pos + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.6, zorder=3)
            if len(values):
                ax.scatter([pos], [values.mean()], marker="D", color="crimson", s=28, zorder=4)
        ax.set_xticks(positions, [f"{g}\nn={len(d)}" for g, d in zip(groups, data)])
        ax.set_title(metric)
        if metric_info.unit == "%":
            ax.set_ylim(-2, 102)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{metric_info.label} per case ({metric_info.unit})")
    fig.suptitle(title or f"{metric_info.label} per case by {group_col} (diamond: group mean)")
    fig.tight_layout()
    return fig


def tradeoff_plot(compare: pd.DataFrame, attribute: str, *, title: str = "", metric=DICE, fairness_of: str = ""):
    """compare: fairness.report.compare_table (Dice and SD in %, SER unitless, *_std over seeds;
    another metric: its unit, and for a distance the best method is the lowest). fairness_of names
    the class the SD and SER columns were computed on when it is not the mean (e.g. "kidney")."""
    plt = _pyplot()
    m = get_metric(metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    dice, dice_std = compare["mean"].to_numpy(float), compare["mean_std"].to_numpy(float)
    pick = np.nanargmax if m.higher_is_better else np.nanargmin
    best = int(pick(dice)) if np.isfinite(dice).any() else None
    of = f"{fairness_of} " if fairness_of else ""
    for ax, figure, label in ((axes[0], f"sd_{attribute}", f"SD of group mean {of}{m.label} by {attribute} ({m.unit})"),
                              (axes[1], f"ser_{attribute}", f"SER of {of}{m.label} by {attribute}" if of
                               else f"SER by {attribute}")):
        unfair, unfair_std = compare[figure].to_numpy(float), compare[f"{figure}_std"].to_numpy(float)
        front = pareto_front(dice, unfair, higher_is_better=m.higher_is_better)
        ax.errorbar(unfair, dice, xerr=np.nan_to_num(unfair_std), yerr=np.nan_to_num(dice_std), fmt="o",
                    color="tab:blue", ecolor="lightgray", capsize=3, zorder=2)
        on = [i for i, f in enumerate(front) if f]
        on.sort(key=lambda i: unfair[i])
        if on:
            ax.plot(unfair[on], dice[on], "--", color="tab:green", zorder=1, label="Pareto front")
            ax.scatter(unfair[on], dice[on], s=160, facecolors="none", edgecolors="tab:green", zorder=3)
        if best is not None:
            ax.scatter([unfair[best]], [dice[best]], marker="*", s=200, color="tab:orange", zorder=4,
                       label=f"best mean {m.label}")
        labels = {}  # methods at the same point share one label instead of overprinting
        for i, name in enumerate(compare.index):
            labels.setdefault((unfair[i], dice[i]), []).append(str(name))
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8,
                        arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5, "shrinkA": 0, "shrinkB": 3})
        ax.set_xlabel(f"{label}  (fairer ←)")
        ax.set_ylabel(f"mean {m.label} ({m.unit})" + ("" if m.higher_is_better else "  (better ↓)"))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title or f"Accuracy against fairness by {attribute} (mean ± std over seeds)")
    fig.tight_layout()
    for ax in axes:
        _spread_labels(fig, ax)
    return fig


def _spread_labels(fig, ax, gap_px: float = 1.0) -> None:
    """Move point labels up or down, each the least distance that clears every label placed before
    it: methods with nearly equal figures (not the same point, which share a label) would otherwise
    print over each other. A label that moved keeps a thin leader line to its point."""
    renderer = fig.canvas.get_renderer()
    px_to_pt = 72.0 / fig.dpi
    placed = []
    for note in sorted(ax.texts, key=lambda t: -ax.transData.transform(t.xy)[1]):
        note.arrow_patch.set_visible(False)     # measured as text alone: the leader would reach the point
        box = note.get_window_extent(renderer)
        shifts = [0.0] + [d for b in placed for d in (b.y0 - gap_px - box.y1, b.y1 + gap_px - box.y0)]
        free = [d for d in shifts if not any(box.translated(0, d).overlaps(b) for b in placed)]
        shift = min(free, key=abs)              # never empty: above the highest placed label is free
        if shift:
            x_pt, y_pt = note.xyann
            note.xyann = (x_pt, y_pt + shift * px_to_pt)
            note.arrow_patch.set_visible(True)
        placed.append(box.translated(0, shift))


CT_WINDOW = (-79.0, 304.0)      # KiTS19's abdominal soft-tissue window (HU)
REFERENCE_COLOUR, PREDICTION_COLOUR = "#00c853", "#ff1744"


def largest_error_slice(reference: np.ndarray, prediction: np.ndarray) -> int:
    """The axial index (axis 0) with the most voxels where prediction and reference disagree on the
    foreground labels; with no error, the one with the most reference foreground."""
    wrong = (reference != prediction) & ((reference > 0) | (prediction > 0))
    per_slice = wrong.reshape(wrong.shape[0], -1).sum(1)
    if per_slice.max() == 0:
        per_slice = (reference > 0).reshape(reference.shape[0], -1).sum(1)
    return int(np.argmax(per_slice))


def crop_window(foreground: np.ndarray, spacing, margin_mm: float = 30.0, min_mm: float = 120.0) -> tuple:
    """(row slice, column slice) around a 2-D foreground, margin_mm on each side and at least min_mm
    wide (whole image when there is no foreground): the organs, not the whole abdomen."""
    if not foreground.any():
        return slice(None), slice(None)
    out = []
    for axis, mm in zip((1, 0), spacing):
        present = np.flatnonzero(foreground.any(axis=axis))
        lo, hi = present[0], present[-1] + 1
        pad = int(round(margin_mm / float(mm)))
        lo, hi = lo - pad, hi + pad
        short = int(round(min_mm / float(mm))) - (hi - lo)
        if short > 0:
            lo, hi = lo - short // 2, hi + short - short // 2
        size = foreground.shape[1 - axis]
        lo, hi = max(0, lo), min(size, hi)
        out.append(slice(int(lo), int(hi)))
    return tuple(out)


def case_slice(ct_hu: np.ndarray, reference: np.ndarray, prediction: np.ndarray, spacing, *, title: str = "",
               size_in: float = 3.2):
    """(figure, axial index): the slice through the largest error, CT in the soft-tissue window,
    reference contours (green) and prediction contours (red), kidney solid and tumor dashed, at the
    voxels' true aspect (spacing z, y, x in mm)."""
    plt = _pyplot()
    z = largest_error_slice(reference, prediction)
    window = crop_window((reference[z] > 0) | (prediction[z] > 0), spacing[1:])
    rows, cols = ct_hu[z][window].shape
    ratio = min(1.2, max(0.35, rows * float(spacing[1]) / max(cols * float(spacing[2]), 1e-6)))
    fig, ax = plt.subplots(figsize=(size_in, size_in * ratio + (0.25 if title else 0.0)))
    ax.imshow(ct_hu[z][window], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="nearest",
              aspect=float(spacing[1]) / float(spacing[2]))
    for labels, colour in ((reference, REFERENCE_COLOUR), (prediction, PREDICTION_COLOUR)):
        for level, style in ((0.5, "solid"), (1.5, "dashed")):      # > 0: kidney and tumor; > 1: tumor
            mask = (labels[z][window] > level).astype(float)
            if 0 < mask.sum() < mask.size:
                ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.0, linestyles=style)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig, z
