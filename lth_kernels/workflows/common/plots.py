"""Plots of the structured-ticket workflows: the early-bird mask-distance heatmap and the GFS budget study."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lth_kernels.workflows.common.structured import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_mask_distance(path, matrices: Mapping[str, Sequence[Sequence[float]]], epochs: Sequence[int],
                       eb_epochs: Mapping[str, int | None], title: str = "") -> None:
    """One epoch x epoch heatmap of mask distances per pruning ratio, the early-bird epoch marked."""
    plt = _plt()
    keys = list(matrices)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        mat = matrices[key]
        n = len(mat)
        im = ax.imshow(mat, cmap="viridis_r", vmin=0.0, vmax=max(1e-9, max((max(r) for r in mat), default=1.0)),
                       origin="upper", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        eb = eb_epochs.get(key)
        label = f"ratio {key}"
        if eb is not None and eb in epochs:
            i = list(epochs).index(eb)
            ax.axvline(i, color="red", lw=1.0, ls="--")
            ax.axhline(i, color="red", lw=1.0, ls="--")
            ax.plot([i], [i], marker="*", color="red", ms=12)
            label += f": EB epoch {eb}"
        else:
            label += ": no EB ticket"
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
        ticks = [i for i in range(n) if n <= 12 or i % math.ceil(n / 8) == 0]
        ax.set_xticks(ticks, [str(epochs[i]) for i in ticks])
        ax.set_yticks(ticks, [str(epochs[i]) for i in ticks])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mask distance")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_budget(path, curves: Mapping[int, Sequence[tuple[int, float]]], thresholds: Mapping[int, int | None],
                fit: Mapping | None, metric: str, eb_iterations: Mapping[int, int | None] | None = None) -> None:
    """Left: subnetwork ``metric`` against pre-training iterations, one curve per training-set size m, the
    threshold marked. Right: threshold against log m with the least-squares fit ``t = a + b ln m``."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    for m, pts in sorted(curves.items()):
        xs = [max(t, 0.5) for t, _ in pts]
        line = ax.plot(xs, [v for _, v in pts], marker="o", label=f"m = {m}")[0]
        t = thresholds.get(m)
        if t is not None:
            ax.axvline(max(t, 0.5), color=line.get_color(), ls=":", lw=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("dense pre-training iterations (0 drawn at 0.5)")
    ax.set_ylabel(f"GFS subnetwork {metric}")
    ax.legend()
    ax.set_title("subnetwork quality vs pre-training")
    ms = [m for m in sorted(thresholds) if thresholds[m] is not None]
    if ms:
        bx.plot([math.log(m) for m in ms], [thresholds[m] for m in ms], "o", label="threshold")
    if fit is not None:
        lo, hi = math.log(min(ms)), math.log(max(ms))
        bx.plot([lo, hi], [fit["a"] + fit["b"] * lo, fit["a"] + fit["b"] * hi], "-",
                label=f"fit t = {fit['a']:.3g} + {fit['b']:.3g} ln m")
    if eb_iterations:
        pts = [(math.log(m), v) for m, v in sorted(eb_iterations.items()) if v is not None]
        if pts:
            bx.plot([p for p, _ in pts], [v for _, v in pts], "s", mfc="none", label="early-bird iteration")
    bx.set_xlabel("ln m (training-set size)")
    bx.set_ylabel("pre-training iterations")
    bx.set_title("threshold vs data-set size")
    bx.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
