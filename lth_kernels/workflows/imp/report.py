"""``lth report RUN_DIR``: an IMP run's ``summary.json``, its table and its plots.

``build_summary`` reads the run tree (every finished stage's ``done.json``, ``metrics.jsonl`` and
``sparsity_report.json``), so it works on a run still in progress or one killed half-way, and aggregates
each (level, branch) over the replicates (mean, sample std, the values). ``report`` writes
``summary.json`` and ``plots/accuracy_vs_density.png`` (test accuracy against the percentage of prunable
weights remaining, log x axis, one curve per branch, error bars over replicates) and
``plots/layer_density.png`` (density of each layer at each level), and returns the table.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from lth_kernels.training.metrics import read_metrics
from lth_kernels.training.rundir import atomic_write_json

SUMMARY = "summary.json"


METRICS = ("density", "density_all", "test_acc_end", "test_acc_best", "val_acc_best", "test_acc_at_val_best",
           "instability", "train_time_s", "samples_per_s")


def select_by_validation(recs: list[dict]) -> tuple[float | None, float | None, int | None]:
    """``(best val_acc, test_acc at that evaluation, its step)`` over the evaluations that have both (the
    first of equal maxima: the earlier model); ``(None, None, None)`` without a validation set."""
    pairs = [r for r in recs if r.get("val_acc") is not None and r.get("test_acc") is not None]
    if not pairs:
        return None, None, None
    best = max(pairs, key=lambda r: r["val_acc"])  # max() keeps the first of equal keys
    return best["val_acc"], best["test_acc"], best["step"]


def stage_record(stage_dir: Path) -> dict | None:
    """One finished stage's numbers, or None when it has not finished."""
    done, rep = stage_dir / "done.json", stage_dir / "sparsity_report.json"
    if not done.exists() or not rep.exists():
        return None
    info, report = json.loads(done.read_text()), json.loads(rep.read_text())
    recs = read_metrics(stage_dir / "metrics.jsonl")
    accs = [r["test_acc"] for r in recs if r.get("test_acc") is not None]
    rates = [r["samples_per_s"] for r in recs if r.get("samples_per_s")]
    end = info.get("metrics") or {}
    lmc = stage_dir / "lmc.json"  # the lmc branch: the error barrier between its two copies
    instability = json.loads(lmc.read_text())["instability"] if lmc.exists() else None
    val_best, test_at_val_best, val_best_step = select_by_validation(recs)
    return {
        "density": report.get("prunable", report)["density"], "density_all": report["density"],
        "test_acc_end": end.get("test_acc"), "test_acc_best": max(accs) if accs else end.get("test_acc"),
        "val_acc_best": val_best, "test_acc_at_val_best": test_at_val_best, "val_best_step": val_best_step,
        "instability": instability,
        "train_time_s": end.get("elapsed_s"), "samples_per_s": sum(rates) / len(rates) if rates else None,
        "steps": info["step"] - info["start_step"],
        "layers": {name: v["density"] for name, v in report.get("layers", {}).items()},
    }


def _aggregate(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(vals) / len(vals)
    spread = len(vals) > 1 and max(vals) != min(vals)  # equal values: exactly 0, not float noise
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if spread else 0.0
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def _num(pattern: str, name: str) -> int | None:
    m = re.fullmatch(pattern, name)
    return int(m.group(1)) if m else None


def build_summary(run_dir: str | Path) -> dict:
    """The run's per-replicate records and their aggregation per level and branch."""
    run_dir = Path(run_dir)
    hp_file = run_dir / "hparams.json"
    if not hp_file.exists():
        raise FileNotFoundError(f"RUN_DIR: {run_dir} is not a run directory (no hparams.json)")
    per_rep: dict[int, dict[int, dict[str, dict]]] = {}
    for rep_dir in sorted(run_dir.glob("replicate_*")):
        r = _num(r"replicate_(\d+)", rep_dir.name)
        for level_dir in rep_dir.glob("level_*"):
            lvl = _num(r"level_(\d+)", level_dir.name)
            if r is None or lvl is None:
                continue
            for stage in sorted(level_dir.iterdir()):
                rec = stage_record(stage) if stage.is_dir() else None
                if rec is not None:
                    per_rep.setdefault(r, {}).setdefault(lvl, {})[stage.name] = rec
    branches = sorted({b for levels in per_rep.values() for stages in levels.values() for b in stages},
                      key=lambda b: (b != "main", b))
    levels = sorted({lvl for levels in per_rep.values() for lvl in levels})
    table = {}
    for lvl in levels:
        row = {}
        for b in branches:
            recs = [per_rep[r][lvl][b] for r in sorted(per_rep) if b in per_rep[r].get(lvl, {})]
            if not recs:
                continue
            row[b] = {"n": len(recs), **{k: _aggregate([rec[k] for rec in recs]) for k in METRICS},
                      "layers": {name: sum(rec["layers"][name] for rec in recs) / len(recs)
                                 for name in recs[0]["layers"]}}
        table[str(lvl)] = row
    return {"run": run_dir.name, "workflow": run_dir.name.split("-", 1)[0],
            "hparams": json.loads(hp_file.read_text()), "replicates": len(per_rep), "branches": branches,
            "levels": table,
            "per_replicate": {str(r): {str(lvl): per_rep[r][lvl] for lvl in sorted(per_rep[r])}
                              for r in sorted(per_rep)}}


def write_summary(run_dir: str | Path) -> dict:
    summary = build_summary(run_dir)
    atomic_write_json(Path(run_dir) / SUMMARY, summary)
    return summary


def _pm(agg: dict, scale: float = 100.0, digits: int = 2, exact: bool = False) -> str:
    """``mean ± std`` (just the mean for one value, or for ``exact`` quantities that did not vary)."""
    if agg["mean"] is None:
        return "-"
    text = f"{agg['mean'] * scale:.{digits}f}"
    return text + (f" ± {agg['std'] * scale:.{digits}f}" if agg["n"] > 1 and not (exact and agg["std"] == 0) else "")


def has_validation(summary: dict) -> bool:
    """Whether the run's stages were evaluated on a validation set (then it, not the test set, selects)."""
    return any(agg["test_acc_at_val_best"]["n"] for row in summary["levels"].values() for agg in row.values()
               if "test_acc_at_val_best" in agg)


def format_table(summary: dict) -> str:
    """Level, % weights remaining, per branch the test accuracy at the end and at the selected step (the best
    validation accuracy; without a validation set the test maximum, marked as such), and the main run's time
    and speed."""
    branches = summary["branches"]
    val = has_validation(summary)
    picked, tag = ("test_acc_at_val_best", "val-best") if val else ("test_acc_best", "test-max")
    unstable = [b for b in branches
                if any(row.get(b, {}).get("instability", {}).get("n") for row in summary["levels"].values())]
    head = ["level", "weights %"] + [f"{b} acc % ({tag})" for b in branches] + [
        f"{b} instability %" for b in unstable] + ["main time s", "main samples/s"]
    rows = []
    for lvl, row in summary["levels"].items():
        main = row.get("main") or next(iter(row.values()))
        cells = [lvl, _pm(main["density"], exact=True)]
        for b in branches:
            cells.append(f"{_pm(row[b]['test_acc_end'])} ({_pm(row[b][picked])})" if b in row else "-")
        cells += [_pm(row[b]["instability"]) if b in row else "-" for b in unstable]
        cells += [_pm(main["train_time_s"], 1, 1), _pm(main["samples_per_s"], 1, 0)]
        rows.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    n = summary["replicates"]
    title = f"{summary['run']}: {n} replicate{'s' if n != 1 else ''} (mean ± std over replicates)" if n > 1 \
        else f"{summary['run']}: 1 replicate"
    held = (summary.get("hparams", {}).get("dataset") or {}).get("validation")
    note = (f"acc %: test accuracy at the end (at the step of best accuracy on {held} held-out training images)"
            if val else "acc %: test accuracy at the end (the best test evaluation: selected on the test set; "
                        "--dataset.validation N selects on a hold-out)")
    return "\n".join([title, note, line(head), line(["-" * w for w in widths]), *map(line, rows)])


MIN_ACC_SPAN = 10.0  # percentage points the accuracy axis spans at least


def plot(summary: dict, run_dir: str | Path) -> list[Path]:
    """Write ``plots/accuracy_vs_density.png`` and ``plots/layer_density.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 100, 50, 20 instead of 10^2 on the log axes

    def log_ticks(axis, low: float) -> None:
        """1-2-5 ticks from 100 % down to ``low``, plainly labelled, without minor labels."""
        ticks = [m * 10.0 ** e for e in range(2, -4, -1) for m in (5, 2, 1) if low * 0.9 <= m * 10.0 ** e <= 100]
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    levels = summary["levels"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    densities, ys = set(), []
    for b in summary["branches"]:
        pts = [(row[b]["density"]["mean"] * 100, row[b]["test_acc_end"]) for row in levels.values()
               if b in row and row[b]["test_acc_end"]["mean"] is not None]
        if not pts:
            continue
        x = [d for d, _ in pts]
        y = [a["mean"] * 100 for _, a in pts]
        lo = [min(a["values"]) * 100 for _, a in pts]
        hi = [max(a["values"]) * 100 for _, a in pts]
        line = ax.errorbar(x, y, yerr=[a["std"] * 100 for _, a in pts], marker="o", ms=4, capsize=3, label=b)
        if summary["replicates"] > 1:  # the replicates' range, not only their standard deviation
            ax.fill_between(x, lo, hi, color=line[0].get_color(), alpha=0.15, lw=0)
        densities.update(round(d, 6) for d in x)
        ys += lo + hi
    ax.set_xscale("log")
    if len(densities) <= 12:  # few levels: a tick at each level's density, labelled with it
        ax.xaxis.set_major_locator(FixedLocator(sorted(densities)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
    else:
        log_ticks(ax.xaxis, min(densities, default=100.0))
    if ys:  # at least MIN_ACC_SPAN points of accuracy shown, so replicate noise is not blown up to full height
        pad = max(0.0, MIN_ACC_SPAN - (max(ys) - min(ys))) / 2 + 1.0
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
    ax.invert_xaxis()  # pruning goes left to right
    ax.set_xlabel("% of prunable weights remaining (log)")
    ax.set_ylabel("test accuracy at the end (%)")
    ax.set_title(f"{summary['run']} ({summary['replicates']} replicate(s))")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths = [out / "accuracy_vs_density.png", out / "layer_density.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    main = {int(lvl): row["main"] for lvl, row in levels.items() if "main" in row}
    names = list(next(iter(main.values()))["layers"]) if main else []
    for name in names:
        xs = sorted(main)
        ax.plot(xs, [main[lvl]["layers"][name] * 100 for lvl in xs], marker="o", ms=4, label=name)
    ax.set_yscale("log")
    log_ticks(ax.yaxis, min([100.0] + [d * 100 for rec in main.values() for d in rec["layers"].values()]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("level")
    ax.set_ylabel("% of the layer's weights remaining (log)")
    ax.set_title("density per layer (main run)")
    ax.grid(True, which="both", alpha=0.3)
    if names:
        ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def report(run_dir: str | Path, plots: bool = True) -> str:
    """Rebuild ``summary.json``, write the plots, return the table (with the plots' paths)."""
    summary = write_summary(run_dir)
    table = format_table(summary)
    if plots and summary["levels"]:
        paths = plot(summary, run_dir)
        table += "\nplots: " + ", ".join(str(p) for p in paths)
    return table


def main(argv: list[str] | None = None) -> int:
    """``lth report``: dispatches on the run's workflow (``workflows/common/report.py``)."""
    from lth_kernels.workflows.common.report import main as report_main

    return report_main(argv)
