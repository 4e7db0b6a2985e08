"""The pre-training budget study of ``lth gfs`` ("How much pre-training is enough to discover a good
subnetwork?", Wolfe et al.): GFS from checkpoints after increasing pre-training, for several data-set sizes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from lth_kernels.training.rundir import atomic_write_json, atomic_write_text
from lth_kernels.workflows.common.structured import accuracy, markdown_table

log = logging.getLogger(__name__)


def threshold(points: list[tuple[int, float]], delta: float) -> int | None:
    """The smallest budget whose metric is within ``delta`` of the best over all budgets (the point from which
    pre-training has produced a good subnetwork; None without points)."""
    if not points:
        return None
    best = max(v for _, v in points)
    return min(t for t, v in points if v >= best - delta)


def fit_log(thresholds: dict[int, int | None]) -> dict | None:
    """Least squares ``t = a + b ln m`` over the sizes with a threshold (None with fewer than two)."""
    pts = [(math.log(m), t) for m, t in thresholds.items() if t is not None]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - a - b * x) ** 2 for x, y in pts)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, "n": n}


def budget_study(hp, out: Path, device=None, data=None) -> dict:
    """Run (or resume) the study; every (m, budget) result is cached as ``m_<m>/gfs_<it>.json``."""
    from lth_kernels.nn.channel_prune import count_parameters
    from lth_kernels.tickets.channels import bn_layers
    from lth_kernels.training.checkpoint import load_step
    from lth_kernels.training.steps import split_step_string
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.plots import plot_budget
    from lth_kernels.workflows.common.structured import build_data, build_model, example_batch, finetune, subset
    from lth_kernels.workflows.early_bird.search import EarlyBirdCallback
    from lth_kernels.workflows.gfs.prune import gfs_prune

    opts = hp.gfs
    train_full, test_ds, info = data if data is not None else build_data(hp.dataset)
    example = example_batch(train_full)
    sizes = sorted({min(int(m), len(train_full)) for m in opts.train_sizes})
    rows, curves, eb_iters = [], {}, {}
    for m in sizes:
        train_ds = subset(train_full, m, seed=hp.training.data_order_seed)
        batch = min(hp.dataset.batch_size, m)
        d = out / f"m_{m}"
        model = build_model(hp.model, info, hp.training.seed)
        # Budgets resolve in this m's epochs; pre-training runs to the largest, constant lr (the theory's GD).
        spe = len(train_ds) // batch  # the trainer's epoch length (the tail batch is dropped)
        budgets = sorted({ep * spe + it for ep, it in (split_step_string(s) for s in opts.pretrain_steps)})
        training = hp.training.replace(training_steps=f"{max(max(budgets), 1)}it", milestone_steps="",
                                       warmup_steps="0it")
        has_bn = bool(bn_layers(model))
        eb = EarlyBirdCallback(model, ("0.5",)) if has_bn else None
        trainer = Trainer(model, train_ds, test_ds, training, batch_size=batch, out_dir=d / "pretrain",
                          save_steps=budgets, callbacks=[eb] if eb else [], device=device, progress=False)
        res = trainer.train()
        eb_file = d / "early_bird.json"
        if eb is not None and not res.skipped:
            atomic_write_json(eb_file, eb.result(spe))
        eb_info = json.loads(eb_file.read_text()) if eb_file.exists() else None
        eb_iters[m] = eb_info["steps"].get("50") if eb_info else None
        curves[m] = []
        for t in budgets:
            cache = d / f"gfs_{t}.json"
            if cache.exists():
                row = json.loads(cache.read_text())
            else:
                model = build_model(hp.model, info, hp.training.seed)
                load_step(d / "pretrain", t, model)
                model.to(trainer.device)
                pr = gfs_prune(model, train_ds, test_ds, opts, batch_size=batch, example=example,
                               seed=hp.training.seed, device=trainer.device)
                sub = pr["model"]
                if opts.budget_finetune:
                    finetune(sub, train_ds, test_ds, lr=opts.finetune_lr, steps=opts.finetune_steps,
                             batch_size=batch, weight_decay=opts.finetune_weight_decay, seed=hp.training.seed,
                             device=trainer.device)
                tr, te = accuracy(sub, train_ds), accuracy(sub, test_ds)
                row = {"m": m, "pretrain_it": t, "train_loss": tr["loss"], "train_acc": tr["acc"],
                       "test_acc": te["acc"], "dense_train_acc": pr["dense_acc"],
                       "kept": sum(x["kept"] for x in pr["layers"]),
                       "channels": sum(x["channels"] for x in pr["layers"]), "params": count_parameters(sub)}
                atomic_write_json(cache, row)
            log.info("budget m=%d t=%d: subnetwork %d/%d channels, train %.4f, test %.4f", m, t, row["kept"],
                     row["channels"], row["train_acc"], row["test_acc"])
            rows.append(row)
            curves[m].append((t, row[opts.threshold_metric]))
    thresholds = {m: threshold(curves[m], opts.threshold_delta) for m in sizes}
    fit = fit_log(thresholds)
    plot_budget(out / "plots" / "budget.png", curves, thresholds, fit, opts.threshold_metric, eb_iters)
    table = _tables(rows, sizes, thresholds, eb_iters, fit, opts.threshold_metric)
    summary = {"run_dir": str(out), "rows": rows, "thresholds": {str(m): t for m, t in thresholds.items()},
               "fit": fit, "early_bird_iteration": {str(m): v for m, v in eb_iters.items()}, "table": table}
    atomic_write_text(out / "table.md", table)
    atomic_write_json(out / "summary.json", summary)
    print(table)
    return summary


def _tables(rows, sizes, thresholds, eb_iters, fit, metric) -> str:
    budgets = sorted({r["pretrain_it"] for r in rows})
    grid = []
    for t in budgets:
        line = {"t": t}
        for m in sizes:
            r = next((x for x in rows if x["m"] == m and x["pretrain_it"] == t), None)
            line[m] = None if r is None else (f"{100 * r['train_acc']:.1f} / {100 * r['test_acc']:.1f} "
                                              f"({r['kept']}/{r['channels']})")
        grid.append(line)
    out = ("GFS subnetwork top-1 % train / test (kept/total channels) vs dense pre-training iterations; "
           f"thresholds on {metric}:\n\n")
    out += markdown_table(grid, [("t", "iterations"), *[(m, f"m = {m}") for m in sizes]])
    thr = [{"m": m, "ln_m": f"{math.log(m):.3f}", "threshold": thresholds[m], "eb": eb_iters.get(m)} for m in sizes]
    out += "\n" + markdown_table(thr, [("m", "m"), ("ln_m", "ln m"), ("threshold", "threshold (it)"),
                                       ("eb", "early-bird it (ratio 0.5)")])
    if fit is not None:
        out += f"\nfit: threshold = {fit['a']:.4g} + {fit['b']:.4g} ln m  (R^2 = {fit['r2']:.3f}, {fit['n']} sizes)\n"
    return out
