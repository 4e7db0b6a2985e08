"""An elastic run's outputs: ``summary.json``, ``table.md`` (Table-1-like: rows = source level x method, columns =
target depths) with the linear-mode-connectivity instabilities and the cost accounting, and ``plots/elastic.png``
(per target: accuracy over sparsity, the transformed tickets against the baselines).

Cost accounting counts training FLOPs as 3 x forward FLOPs (forward, input and weight gradients) per sample,
and a masked layer's forward FLOPs as its dense FLOPs times its density (the theoretical sparse cost the
paper and RigL use; what a kernel achieves in time is another matter). Only the weights of ``nn.Linear`` and
``nn.Conv2d`` layers are counted (BN, pooling and activations are comparatively negligible).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from lth_kernels.tickets import Ticket
from lth_kernels.training.rundir import atomic_write_json, atomic_write_text
from lth_kernels.workflows.imp.report import stage_record

SUMMARY = "summary.json"


TABLE = "table.md"


PLOT = "plots/elastic.png"


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense forward FLOPs (2 x multiply-adds) per sample of every Linear / Conv2d weight, by parameter name."""
    out: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, res):
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                per_out = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
                out[f"{name}.weight"] = 2 * per_out * res[0].numel()
            else:  # Linear on [..., in]: every leading position of one sample
                out[f"{name}.weight"] = 2 * mod.in_features * mod.out_features * (x[0].numel() // mod.in_features)
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            hooks.append(mod.register_forward_hook(hook(name)))
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return out


def sparse_flops(flops: dict[str, int], ticket: Ticket | None) -> float:
    """Forward FLOPs per sample with each layer scaled by its density in ``ticket`` (dense without one)."""
    if ticket is None:
        return float(sum(flops.values()))
    return float(sum(f * (float(ticket[n].float().mean()) if n in ticket else 1.0) for n, f in flops.items()))


def imp_cost(runner, replicate: int, levels: int, flops: dict[str, int]) -> float:
    """Training FLOPs of an IMP run to ``levels``: dense steps to θ_K, then each level's steps at its density."""
    per_step = 3 * runner.hp.dataset.batch_size
    cost = runner.rewind_step * per_step * sparse_flops(flops, None)
    for level in range(levels + 1):
        ticket = Ticket.load(runner.level_dir(replicate, level) / "mask.safetensors")
        cost += (runner.end_step - runner.rewind_step) * per_step * sparse_flops(flops, ticket)
    return cost


def cost_accounting(er, replicate: int = 0) -> dict:
    """FLOPs of finding each source ticket once, of training each transformed ticket, and of IMP on each target,
    in FLOPs and in units of one dense training of that network, at the last transformed level."""
    info, level = er.data[2], max(er.levels)
    shape = (info.in_chans, *info.img_size)
    nets, out = {}, {"convention": "3 x forward FLOPs per training sample; masked layers scaled by density",
                     "level": level}
    depths = sorted({d for p in er.hp.pair_list for d in p})
    for d in depths:
        runner = er.imp(d)
        flops = forward_flops(runner.new_model(0), shape)
        dense = runner.end_step * 3 * runner.hp.dataset.batch_size * sparse_flops(flops, None)
        done = all((runner.level_dir(replicate, lv) / "mask.safetensors").exists() for lv in range(level + 1))
        imp = imp_cost(runner, replicate, level, flops) if done else None
        nets[d] = {"model": runner.hp.model.name, "forward_flops": sum(flops.values()), "dense_training": dense,
                   "imp_to_level": imp, "imp_x_dense": imp / dense if imp else None, "flops": flops}
    ett = {}
    for s, t in er.hp.pair_list:
        mask = er.target_dir(replicate, t, level) / f"ett_from_{s}" / "mask.safetensors"
        if not mask.exists():
            continue
        runner = er.imp(t)
        steps = runner.end_step - (0 if er.hp.start_at_step_zero else runner.rewind_step)
        c = steps * 3 * runner.hp.dataset.batch_size * sparse_flops(nets[t]["flops"], Ticket.load(mask))
        ett[f"{s}:{t}"] = {"flops": c, "x_dense": c / nets[t]["dense_training"]}
    for v in nets.values():
        v.pop("flops")
    out.update(networks={str(d): v for d, v in nets.items()}, ett=ett)
    sources = sorted({s for s, _ in er.hp.pair_list})
    targets = sorted({t for _, t in er.hp.pair_list})
    if all(nets[d]["imp_to_level"] for d in depths) and len(ett) == len(er.hp.pair_list):
        elth = sum(nets[s]["imp_to_level"] for s in sources) + sum(v["flops"] for v in ett.values())
        out["total"] = {"elastic": elth, "imp_on_every_target": sum(nets[t]["imp_to_level"] for t in targets)}
    return out


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _collect(er) -> dict:
    hp, reps = er.hp, range(er.hp.imp.replicates)
    sources = sorted({s for s, _ in hp.pair_list})
    targets = sorted({t for _, t in hp.pair_list})
    rows: list[dict] = []

    def add(label, level, dirs_for_target):
        cells = {}
        for t in targets:
            recs = [stage_record(d) for r in reps if (d := dirs_for_target(r, t)) is not None]
            recs = [x for x in recs if x is not None]
            if recs:
                cells[str(t)] = {"test_acc": _mean(x["test_acc_end"] for x in recs),
                                 "density": _mean(x["density"] for x in recs), "n": len(recs)}
        if cells:
            rows.append({"method": label, "level": level, "cells": cells})

    add("Dense target", 0, lambda r, t: er.imp(t).level_dir(r, 0))
    lmc, transforms = {}, {}
    for lv in er.levels:
        add("IMP on target (rewind)", lv, lambda r, t, lv=lv: er.imp(t).level_dir(r, lv))
        for s in sources:
            add(f"Reinit <- {s}", lv, lambda r, t, s=s, lv=lv: er.target_dir(r, t, lv) / f"reinit_from_{s}")
        for s in sources:
            add(f"ETT shuffled layerwise <- {s}", lv,
                lambda r, t, s=s, lv=lv: er.target_dir(r, t, lv) / f"ett_shuffled_from_{s}")
        for method, label in (("random", "Random prune (global)"), ("magnitude", "One-shot magnitude"),
                              ("snip", "SNIP"), ("grasp", "GraSP"), ("synflow", "SynFlow")):
            add(label, lv, lambda r, t, m=method, lv=lv: er.target_dir(r, t, lv) / m)
        for s in sources:
            add(f"ETT random copies <- {s}", lv,
                lambda r, t, s=s, lv=lv: er.target_dir(r, t, lv) / f"ett_random_copies_from_{s}")
        for s in sources:
            add(f"ETT <- {s}", lv, lambda r, t, s=s, lv=lv: er.target_dir(r, t, lv) / f"ett_from_{s}")
        for s, t in hp.pair_list:
            runs = [json.loads(p.read_text()) for r in reps
                    if (p := er.target_dir(r, t, lv) / f"lmc_from_{s}" / "lmc.json").exists()]
            if runs:
                lmc.setdefault(str(lv), {})[f"{s}:{t}"] = {
                    "instability": _mean(x["instability"] for x in runs), "alphas": runs[0]["alphas"],
                    "test_error": [_mean(col) for col in zip(*(x["test_error"] for x in runs))]}
            p = er.target_dir(0, t, lv) / f"elastic_from_{s}.json"
            if p.exists():
                transforms.setdefault(str(lv), {})[f"{s}:{t}"] = json.loads(p.read_text())
    return {"run": er.path.name, "workflow": "elastic", "level": er.level, "levels": er.levels,
            "matched_density": hp.matched_density,
            "nominal_density": {str(lv): hp.nominal_density(lv) for lv in er.levels},
            "baseline_density": {str(lv): {str(t): _mean(er.matched_density(r, t, lv) for r in reps) for t in targets}
                                 for lv in er.levels},
            "targets": targets, "sources": sources, "rows": rows, "lmc": lmc, "transforms": transforms,
            "imp_runs": {str(d): str(er.imp(d).path) for d in sorted(set(sources) | set(targets))},
            "models": {str(d): er.imp(d).hp.model.name for d in sorted(set(sources) | set(targets))}}


def _fmt_flops(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}FLOPs"
    return f"{x:.0f} FLOPs"


def _pct(density: float) -> str:
    return f"{100 * (1 - density):.2f}%"


def format_table(summary: dict) -> str:
    """Markdown: test accuracy % (prunable weights remaining %) per level, method and target depth, then LMC
    and cost."""
    targets = [str(t) for t in summary["targets"]]
    head = ["level (nominal sparsity)", "method"] + [f"{summary['models'][t]} (depth {t})" for t in targets]
    nominal = summary["nominal_density"]
    lines = [f"## {summary['run']}: source level{'s' if len(nominal) > 1 else ''} "
             + ", ".join(f"{lv} (sparsity {_pct(d)})" for lv, d in nominal.items())
             + f" of {summary['level']}", "",
             "pruning baselines matched to each target's transformed ticket (density): "
             + "; ".join(f"level {lv}: " + ", ".join(f"depth {t} {100 * d:.2f}%" for t, d in per.items())
                         for lv, per in summary["baseline_density"].items()), "",
             "test accuracy % at the end (prunable weights remaining %)", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in summary["rows"]:
        lv = str(row["level"])
        cells = ["0 (dense)" if lv == "0" else f"{lv} ({_pct(nominal[lv])})", row["method"]]
        for t in targets:
            c = row["cells"].get(t)
            cells.append("-" if c is None or c["test_acc"] is None else
                         f"{100 * c['test_acc']:.2f} ({100 * c['density']:.1f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    if summary["lmc"]:
        points = len(next(iter(next(iter(summary["lmc"].values())).values()))["alphas"])
        lines += ["", f"linear mode connectivity of the transformed ticket (two data orders, {points} points): "
                  "instability = max test error - mean of the ends", ""]
        lines += [f"- level {lv}, {k.replace(':', ' -> ')}: {100 * v['instability']:.2f} points"
                  for lv, per in summary["lmc"].items() for k, v in per.items()]
    if summary["transforms"]:
        lines += ["", "transforms (generated or given mapping; sparsity of the prunable weights)", ""]
        for lv, per in summary["transforms"].items():
            for k, v in per.items():
                lines.append(f"- level {lv}, {k.replace(':', ' -> ')}: `{v['mapping']}`, units {v['source_units']} -> "
                             f"{v['target_units']}, sparsity {100 * v['source']['sparsity']:.2f}% -> "
                             f"{100 * v['target']['sparsity']:.2f}%")
    cost = summary.get("cost")
    if cost:
        lines += ["", f"cost at level {cost['level']} ({cost['convention']})", "",
                  "| network | dense training | IMP to the ticket's level | ETT training |", "|---|---|---|---|"]
        for d, v in cost["networks"].items():
            etts = [f"{e['x_dense']:.2f}x (from {k.split(':')[0]})" for k, e in cost["ett"].items()
                    if k.split(":")[1] == d]
            imp = f"{_fmt_flops(v['imp_to_level'])} = {v['imp_x_dense']:.2f}x" if v["imp_to_level"] else "-"
            lines.append(f"| {v['model']} | {_fmt_flops(v['dense_training'])} | {imp} | {', '.join(etts) or '-'} |")
        if "total" in cost:
            tot = cost["total"]
            lines += ["", f"all targets: elastic (source IMP once + each transformed ticket) "
                      f"{_fmt_flops(tot['elastic'])} vs IMP on every target {_fmt_flops(tot['imp_on_every_target'])}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> Path:
    """Per target: test accuracy over sparsity (the cells' own densities), one line per method across the
    levels (the dense target a horizontal line); last panel: LMC instability over the levels' sparsity, or the
    error along the line when one level is transformed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [str(t) for t in summary["targets"]]
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(6 * (len(targets) + 1), 4.8), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in summary["rows"]))
    for ax, t in zip(axes[0], targets):
        for method in methods:
            pts = sorted((100 * (1 - c["density"]), 100 * c["test_acc"]) for row in summary["rows"]
                         if row["method"] == method and (c := row["cells"].get(t)) and c["test_acc"] is not None)
            if not pts:
                continue
            if method == "Dense target":
                ax.axhline(pts[0][1], color="k", lw=1, ls=":", label=method)
                continue
            bold = method.startswith(("ETT <-", "IMP on"))
            ax.plot(*zip(*pts), marker="o" if bold else ".", lw=2.2 if bold else 1, ls="-" if bold else "--",
                    label=method)
        ax.set_xlabel("sparsity of the prunable weights (%)")
        ax.set_ylabel("test accuracy at the end (%)")
        ax.set_title(f"{summary['models'][t]} (depth {t})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    lmc = summary["lmc"]
    if len(lmc) > 1:
        pairs = list(dict.fromkeys(k for per in lmc.values() for k in per))
        for k in pairs:
            pts = [(100 * (1 - summary["nominal_density"][lv]), 100 * per[k]["instability"])
                   for lv, per in lmc.items() if k in per]
            ax.plot(*zip(*sorted(pts)), marker="o", label=k.replace(":", " -> "))
        ax.set_xlabel("nominal sparsity of the source level (%)")
        ax.set_ylabel("instability (test error points)")
    else:
        for per in lmc.values():
            for k, v in per.items():
                ax.plot(v["alphas"], [100 * e for e in v["test_error"]], marker=".",
                        label=f"{k.replace(':', ' -> ')} (instability {100 * v['instability']:.2f})")
        ax.set_xlabel("interpolation alpha between the two copies")
        ax.set_ylabel("test error (%)")
    ax.set_title("linear mode connectivity of the transformed tickets")
    ax.grid(True, alpha=0.3)
    if lmc:
        ax.legend(fontsize=8)
    fig.suptitle(summary["run"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(er) -> dict:
    """Write ``summary.json``, ``table.md`` and ``plots/elastic.png`` of an ``ElasticRunner``'s run."""
    summary = _collect(er)
    summary["cost"] = cost_accounting(er)
    atomic_write_json(er.path / SUMMARY, summary)
    atomic_write_text(er.path / TABLE, format_table(summary))
    plot(summary, er.path / PLOT)
    return summary

__all__ = ["cost_accounting", "format_table", "forward_flops", "plot", "sparse_flops", "write_report"]
