"""The jackpot run's table (``table.md``, also printed) and figure (``plots/jackpot.png``)."""

from __future__ import annotations

from pathlib import Path

from lth_kernels.training.rundir import atomic_write_bytes, atomic_write_text


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def epochs_to(curve, level: float) -> int | None:
    """The first search epoch whose test accuracy reaches ``level`` (None if none does): the search cost."""
    return next((ep for ep, acc in curve if acc >= level), None)


def table(summary: dict) -> str:
    """Markdown: per sparsity, the accuracy of dense / magnitude mask / each searched rule, swaps, overlaps,
    and the search cost (epochs until 99 % of the best final accuracy of the sparsity's searches)."""
    lines = [f"# lottery jackpots: {summary['model']} on {summary['dataset']}", "",
             f"weights: {summary['source']}; dense test accuracy {_pct(summary['dense_acc'])} %", "",
             "The magnitude mask without search is evaluated after re-estimating the BN running statistics on "
             "training batches (in brackets: with the pre-trained statistics).", "",
             "| sparsity | rule (@ score init) | test acc % | magnitude mask, no search % | epochs to 99 % of best | "
             "swaps, first / last epoch | IoU with magnitude init |", "|---|---|---|---|---|---|---|"]
    for s, e in summary["sparsities"].items():
        mag = e.get("magnitude_acc")
        mag = f"{_pct(mag.get('acc'))} ({_pct(mag.get('acc_no_recalibration'))})" if isinstance(mag, dict) else \
            _pct(mag)
        best = max(r["acc"] for r in e["rules"].values())
        for rule, r in e["rules"].items():
            sw = r["swaps"]
            swaps = f"{sw[0]['swaps']} / {sw[-1]['swaps']}" if sw else "-"
            cost = epochs_to([(ep, a) for ep, a in r["curve"] if ep > 0], 0.99 * best)
            cost = "-" if cost is None else f"{cost:g}"
            lines.append(f"| {s} | {rule} | {_pct(r['acc'])} | {mag} | {cost} | {swaps} | "
                         f"{r['overlap_with_magnitude_init']:.3f} |")
        if "finetuned_acc" in e:
            first = next(iter(e["rules"]))
            lines.append(f"| {s} | {first} + weight fine-tuning | {_pct(e['finetuned_acc'])} | | | |")
    lines += ["", "IoU of the searched mask (first rule) with the masks of pruning criteria at the same sparsity:", "",
              "| sparsity | " + " | ".join(_overlap_keys(summary)) + " |",
              "|---|" + "---|" * len(_overlap_keys(summary))]
    for s, e in summary["sparsities"].items():
        lines.append(f"| {s} | " + " | ".join(f"{e['overlap'].get(k, float('nan')):.3f}"
                                              for k in _overlap_keys(summary)) + " |")
    return "\n".join(lines) + "\n"


def _overlap_keys(summary: dict) -> list[str]:
    keys: list[str] = []
    for e in summary["sparsities"].values():
        keys += [k for k in e["overlap"] if k not in keys]
    return keys


def write_report(run_dir: str | Path, summary: dict, hp=None) -> None:
    """``table.md`` and ``plots/jackpot.png`` (accuracy per epoch, swaps per epoch, overlap with criteria)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "table.md", table(summary))
    rows = list(summary["sparsities"].items())
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4 * len(rows)), squeeze=False)
    for (s, e), (ax_acc, ax_sw, ax_ov) in zip(rows, axes):
        for rule, r in e["rules"].items():
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            ax_acc.plot(xs, [100 * y for y in ys], marker=".", label=rule)
            if r["swaps"]:
                ax_sw.plot([h["epoch"] for h in r["swaps"]], [h["swaps"] for h in r["swaps"]], marker=".", label=rule)
        ax_acc.axhline(100 * summary["dense_acc"], color="k", ls="--", lw=1, label="dense")
        ax_acc.set(title=f"sparsity {s}: test accuracy (epoch 0 = magnitude mask)", xlabel="search epoch",
                   ylabel="top-1 %")
        ax_acc.legend(fontsize=8)
        # symlog: linear near 0 (an epoch without swaps sits at 0, not at a made-up 0.5), log above 1.
        ax_sw.set_yscale("symlog", linthresh=1.0)
        ax_sw.set(title="mask swaps per epoch (all layers)", xlabel="search epoch", ylabel="swaps (symlog)",
                  ylim=(0, None))
        ax_sw.legend(fontsize=8)
        keys = list(e["overlap"])
        ax_ov.bar(range(len(keys)), [e["overlap"][k] for k in keys], color="tab:blue")
        ax_ov.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=8)
        ax_ov.set(title="IoU of the searched mask with other masks", ylim=(0, 1))
    fig.suptitle(f"lottery jackpots: {summary['model']} on {summary['dataset']} ({summary['source'].split(':')[0]} "
                 "weights)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(run_dir / "plots" / "jackpot.png", buf.getvalue())

__all__ = ["table", "write_report"]
