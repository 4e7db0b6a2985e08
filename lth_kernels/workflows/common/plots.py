"""Plots of the structured-ticket workflows: the early-bird mask-distance heatmap, the GFS curves and the GFS
budget study."""

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
                       eb_epochs: Mapping[str, int | None], title: str = "", epsilon: float | None = None) -> None:
    """One epoch x epoch heatmap of mask distances per pruning ratio on one shared colour scale (so the ratios
    compare by colour), the ``epsilon`` contour drawn (where the detection rule is met) and the early-bird epoch
    marked."""
    plt = _plt()
    keys = list(matrices)
    vmax = max([1e-9] + [v for mat in matrices.values() for row in mat for v in row])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys) + 1.0, 4.0), squeeze=False)
    im = None
    for ax, key in zip(axes[0], keys):
        mat = matrices[key]
        n = len(mat)
        im = ax.imshow(mat, cmap="viridis_r", vmin=0.0, vmax=vmax, origin="upper",
                       extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        if epsilon is not None and n > 1 and min(v for row in mat for v in row) <= epsilon <= vmax:
            ax.contour(range(n), range(n), mat, levels=[epsilon], colors="white", linewidths=1.0)
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
    if im is not None:
        bar = fig.colorbar(im, ax=list(axes[0]), fraction=0.046 / len(keys), pad=0.04, label="mask distance")
        if epsilon is not None and epsilon <= vmax:
            bar.ax.axhline(epsilon, color="white", lw=1.5)
            bar.ax.text(1.6, epsilon, f"ε={epsilon:g}", va="center", fontsize=7, transform=bar.ax.get_yaxis_transform())
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    plt.close(fig)


def plot_budget(path, curves: Mapping[int, Sequence[tuple[int, float]]], thresholds: Mapping[int, int | None],
                fits: Mapping | None, metric: str, eb_iterations: Mapping[int, int | None] | None = None,
                intervals: Mapping[int, tuple[int | None, int | None]] | None = None) -> None:
    """Left: subnetwork ``metric`` against pre-training iterations, one curve per training-set size m, the
    threshold marked. Right: threshold against log m (bootstrap intervals as error bars) with the fits of
    ``fits`` (``{"log" | "linear" | "constant": fit}``, each labelled with its AIC)."""
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
        ys = [thresholds[m] for m in ms]
        iv = [(intervals or {}).get(m) or (None, None) for m in ms]
        err = [[y - (lo if lo is not None else y) for y, (lo, _) in zip(ys, iv)],
               [(hi if hi is not None else y) - y for y, (_, hi) in zip(ys, iv)]]
        bx.errorbar([math.log(m) for m in ms], ys, yerr=err, fmt="o", capsize=3, label="threshold (95 % CI)")
        grid = [min(ms) + (max(ms) - min(ms)) * i / 40 for i in range(41)]
        for kind, f in (fits or {}).items():
            if f is None:
                continue
            x = {"log": [math.log(m) for m in grid], "linear": grid, "constant": [0.0] * len(grid)}[kind]
            bx.plot([math.log(m) for m in grid], [f["a"] + f["b"] * v for v in x], "-", lw=1.0,
                    label=f"{kind} fit (AIC {f['aic']:.1f})")
    if eb_iterations:
        pts = [(math.log(m), v) for m, v in sorted(eb_iterations.items()) if v is not None]
        if pts:
            bx.plot([p for p, _ in pts], [v for _, v in pts], "s", mfc="none", label="early-bird iteration")
    bx.set_xlabel("ln m (training-set size)")
    bx.set_ylabel("pre-training iterations")
    bx.set_title("threshold vs data-set size")
    bx.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_gfs(path, layers: Sequence[Mapping], tolerance: float, title: str = "") -> None:
    """Left: per layer, the mini-batch loss (solid) and the stopping-rule accuracy where it was evaluated
    (dots, right axis) against the number of channels selected, the stop marked by a vertical line and the
    bar ``(1 - tolerance) * target`` dashed. Right: kept channels per layer beside the dense widths."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 4.2))
    acc_ax = ax.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, layer in enumerate(layers):
        c = colors[i % len(colors)]
        curve = layer.get("curve") or []
        ks = [p["kept"] for p in curve]
        ax.plot(ks, [p["loss"] for p in curve], color=c, lw=1.2, label=layer["layer"])
        ev = [(p["kept"], p["eval_acc"]) for p in curve if p.get("eval_acc") is not None]
        if ev:
            acc_ax.plot(*zip(*ev), ls="none", marker="o", ms=3, color=c)
        if layer.get("target_acc") is not None:
            acc_ax.axhline((1 - tolerance) * layer["target_acc"], color=c, ls="--", lw=0.7)
        if ks:
            ax.axvline(layer["kept"], color=c, ls=":", lw=0.9)
    ax.set(xlabel="channels selected", ylabel="mini-batch loss (lines)",
           title="greedy curves (dotted: stop; dashed: (1 - tol) x target)")
    acc_ax.set_ylabel("stopping-set top-1 (dots)")
    ax.legend(fontsize=7, loc="upper right")
    x = range(len(layers))
    bx.bar([i - 0.2 for i in x], [layer["channels"] for layer in layers], 0.4, label="dense", color="lightgray")
    bx.bar([i + 0.2 for i in x], [layer["kept"] for layer in layers], 0.4, label="kept", color="tab:blue")
    bx.set_xticks(list(x), [layer["layer"] for layer in layers], rotation=45, ha="right", fontsize=7)
    bx.set(ylabel="channels", title="kept channels per layer")
    bx.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
