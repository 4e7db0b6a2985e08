"""The pre-training budget study of ``lth gfs`` ("How much pre-training is enough to discover a good
subnetwork?", Wolfe et al.): GFS from checkpoints after increasing pre-training, for several data-set sizes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from lth_kernels._util import Progress
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


FITS = ("log", "linear", "constant")  # t = a + b ln m; t = a + b m; t = a


def fit(points: list[tuple[int, float]], kind: str = "log") -> dict | None:
    """Least squares of thresholds ``(m, t)`` against ``kind`` (``FITS``), with R^2 and the Gaussian AIC
    ``n ln(RSS / n) + 2 k`` (k = 1 for constant, 2 otherwise; lower is better). None with too few points
    (two distinct m for the two-parameter fits, one point for the constant)."""
    if kind not in FITS:
        raise ValueError(f"kind: expected one of {', '.join(FITS)}, got {kind!r}")
    pts = [((math.log(m) if kind == "log" else float(m)), float(t)) for m, t in points if t is not None]
    n = len(pts)
    k = 1 if kind == "constant" else 2
    if n < 1 or (k == 2 and len({x for x, _ in pts}) < 2):
        return None
    my = sum(y for _, y in pts) / n
    if k == 1:
        a, b = my, 0.0
    else:
        mx = sum(x for x, _ in pts) / n
        b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - a - b * x) ** 2 for x, y in pts)
    aic = n * math.log(max(ss_res / n, 1e-12)) + 2 * k
    return {"kind": kind, "a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, "n": n, "aic": aic}


def fit_log(thresholds: dict[int, int | None]) -> dict | None:
    """Least squares ``t = a + b ln m`` over the sizes with a threshold (None with fewer than two)."""
    return fit(list(thresholds.items()), "log")


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The replicates' metric averaged per budget (the budgets every replicate has)."""
    common = set.intersection(*({t for t, _ in c} for c in curves)) if curves else set()
    return [(t, sum(dict(c)[t] for c in curves) / len(curves)) for t in sorted(common)]


def bootstrap_threshold(curves: list[list[tuple[int, float]]], delta: float, samples: int,
                        seed: int = 0) -> tuple[int | None, int | None]:
    """95 % percentile interval of the threshold of the mean curve when the replicates are resampled with
    replacement (``samples`` times); one replicate gives the point itself."""
    import random

    if not curves:
        return None, None
    rng = random.Random(seed)
    draws = sorted(t for t in (threshold(mean_curve([rng.choice(curves) for _ in curves]), delta)
                               for _ in range(samples if len(curves) > 1 else 1)) if t is not None)
    if not draws:
        return None, None
    return draws[int(0.025 * (len(draws) - 1))], draws[math.ceil(0.975 * (len(draws) - 1))]


def budget_study(hp, out: Path, device=None, data=None) -> dict:
    """Run (or resume) the study; every (m, replicate, budget) result is cached as ``m_<m>[_r<r>]/gfs_<it>.json``."""
    from lth_kernels.nn.channel_prune import count_parameters
    from lth_kernels.tickets.channels import bn_layers
    from lth_kernels.training.checkpoint import load_step
    from lth_kernels.training.steps import split_step_string
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.plots import plot_budget
    from lth_kernels.workflows.common.structured import (
        build_data,
        build_model,
        example_batch,
        plain_train_set,
        subset,
    )
    from lth_kernels.workflows.early_bird.search import EarlyBirdCallback
    from lth_kernels.workflows.gfs.prune import final_finetune, gfs_prune

    opts, bud = hp.gfs, hp.budget
    train_full, test_ds, info = data if data is not None else build_data(hp.dataset)
    plain_full = plain_train_set(hp.dataset, train_full)
    example = example_batch(train_full)
    sizes = sorted({min(int(m), len(train_full)) for m in opts.train_sizes})
    rows, curves, eb_iters = [], {}, {}
    bar = Progress(len(sizes) * bud.replicates, desc="budget study", unit="run", logger=log,
                   line=f"budget study: {len(sizes)} training-set sizes x {bud.replicates} replicate(s), "
                        f"{len(opts.pretrain_steps)} pre-training budgets each")
    for m in sizes:
        train_ds = subset(train_full, m, seed=hp.training.data_order_seed)
        eval_ds = subset(plain_full, m, seed=hp.training.data_order_seed)  # the same m examples, un-augmented
        batch = min(hp.dataset.batch_size, m)
        curves[m] = []
        for rep in range(bud.replicates):
            seed = hp.training.seed + rep
            d = out / (f"m_{m}" if rep == 0 else f"m_{m}_r{rep}")
            model = build_model(hp.model, info, seed)
            # Budgets resolve in this m's epochs; pre-training runs to the largest, constant lr (the theory's GD).
            spe = len(train_ds) // batch  # the trainer's epoch length (the tail batch is dropped)
            budgets = sorted({ep * spe + it for ep, it in (split_step_string(s) for s in opts.pretrain_steps)})
            training = hp.training.replace(training_steps=f"{max(max(budgets), 1)}it", milestone_steps="",
                                           warmup_steps="0it", seed=seed, data_order_seed=seed)
            has_bn = bool(bn_layers(model))
            eb = EarlyBirdCallback(model, ("0.5",)) if has_bn else None
            trainer = Trainer(model, train_ds, test_ds, training, batch_size=batch, out_dir=d / "pretrain",
                              save_steps=budgets, callbacks=[eb] if eb else [], device=device, progress=False)
            res = trainer.train()
            eb_file = d / "early_bird.json"
            if eb is not None and not res.skipped:
                atomic_write_json(eb_file, eb.result(spe))
            eb_info = json.loads(eb_file.read_text()) if eb_file.exists() else None
            if rep == 0:
                eb_iters[m] = eb_info["steps"].get("50") if eb_info else None
            curve = []
            for t in budgets:
                cache = d / f"gfs_{t}.json"
                if cache.exists():
                    row = json.loads(cache.read_text())
                else:
                    model = build_model(hp.model, info, seed)
                    load_step(d / "pretrain", t, model)
                    model.to(trainer.device)
                    pr = gfs_prune(model, train_ds, test_ds, opts, batch_size=batch, example=example, seed=seed,
                                   device=trainer.device, eval_ds=eval_ds, fixed_size=bud.fixed_size, progress=False)
                    sub = pr["model"]
                    if opts.budget_finetune:
                        final_finetune(sub, train_ds, test_ds, hp, device=trainer.device)
                    tr, te = accuracy(sub, eval_ds), accuracy(sub, test_ds)
                    row = {"m": m, "replicate": rep, "pretrain_it": t, "train_loss": tr["loss"],
                           "train_acc": tr["acc"], "test_acc": te["acc"], "dense_train_acc": pr["dense_acc"],
                           "kept": sum(x["kept"] for x in pr["layers"]),
                           "channels": sum(x["channels"] for x in pr["layers"]), "params": count_parameters(sub)}
                    atomic_write_json(cache, row)
                log.info("budget m=%d rep=%d t=%d: subnetwork %d/%d channels, train %.2f %%, test %.2f %%", m, rep,
                         t, row["kept"], row["channels"], 100 * row["train_acc"], 100 * row["test_acc"])
                rows.append(row)
                curve.append((t, row[opts.threshold_metric]))
            curves[m].append(curve)
            bar.update()
    bar.close()
    thresholds = {m: threshold(mean_curve(curves[m]), opts.threshold_delta) for m in sizes}
    intervals = {m: bootstrap_threshold(curves[m], opts.threshold_delta, bud.bootstrap, hp.training.seed)
                 for m in sizes}
    points = [(m, threshold(c, opts.threshold_delta)) for m in sizes for c in curves[m]]  # one per replicate
    fits = {kind: fit(points, kind) for kind in FITS}
    means = {m: mean_curve(curves[m]) for m in sizes}
    plot_budget(out / "plots" / "budget.png", means, thresholds, fits, opts.threshold_metric, eb_iters, intervals)
    table = _tables(rows, sizes, thresholds, intervals, eb_iters, fits, opts.threshold_metric, bud)
    summary = {"run_dir": str(out), "rows": rows, "thresholds": {str(m): t for m, t in thresholds.items()},
               "intervals": {str(m): list(v) for m, v in intervals.items()}, "fit": fits["log"], "fits": fits,
               "early_bird_iteration": {str(m): v for m, v in eb_iters.items()}, "table": table}
    atomic_write_text(out / "table.md", table)
    atomic_write_json(out / "summary.json", summary)
    print(table)
    return summary


def _tables(rows, sizes, thresholds, intervals, eb_iters, fits, metric, bud) -> str:
    budgets = sorted({r["pretrain_it"] for r in rows})
    grid = []
    for t in budgets:
        line = {"t": t}
        for m in sizes:
            rs = [x for x in rows if x["m"] == m and x["pretrain_it"] == t]
            if rs:
                tr, te = (sum(r[k] for r in rs) / len(rs) for k in ("train_acc", "test_acc"))
                kept = sum(r["kept"] for r in rs) / len(rs)
                line[m] = f"{100 * tr:.1f} / {100 * te:.1f} ({kept:g}/{rs[0]['channels']})"
        grid.append(line)
    size = f"every layer grown to {bud.fixed_size} channels" if bud.fixed_size else "tolerance stopping rule"
    out = (f"GFS subnetwork top-1 % train / test (kept/total channels) vs dense pre-training iterations ({size}; "
           f"mean of {bud.replicates} replicate(s)); thresholds on {metric}:\n\n")
    out += markdown_table(grid, [("t", "iterations"), *[(m, f"m = {m}") for m in sizes]])
    thr = [{"m": m, "ln_m": f"{math.log(m):.3f}", "threshold": thresholds[m],
            "ci": "-" if intervals[m][0] is None else f"[{intervals[m][0]}, {intervals[m][1]}]",
            "eb": eb_iters.get(m)} for m in sizes]
    out += "\n" + markdown_table(thr, [("m", "m"), ("ln_m", "ln m"), ("threshold", "threshold (it)"),
                                       ("ci", "95 % bootstrap interval"), ("eb", "early-bird it (ratio 0.5)")])
    shown = [f for f in (fits[k] for k in FITS) if f is not None]
    if shown:
        out += "\n" + markdown_table([{"model": _formula(f), "r2": f"{f['r2']:.3f}", "aic": f"{f['aic']:.2f}",
                                       "n": f["n"]} for f in shown],
                                     [("model", "fit of the thresholds"), ("r2", "R^2"), ("aic", "AIC (lower is "
                                                                                               "better)"),
                                      ("n", "points")])
    return out


def _formula(f: dict) -> str:
    if f["kind"] == "constant":
        return f"threshold = {f['a']:.4g}"
    return f"threshold = {f['a']:.4g} + {f['b']:.4g} {'ln m' if f['kind'] == 'log' else 'm'}"
