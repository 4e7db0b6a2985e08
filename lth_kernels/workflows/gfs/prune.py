"""GFS over a whole model (``gfs_prune``) and the single pruning run of ``lth gfs``."""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

import torch
from torch import nn

from lth_kernels._util import Progress
from lth_kernels.nn._channel_graph import _HOMOGENEOUS_MODULES
from lth_kernels.nn.channel_prune import analyse, channel_param_masks, prune_channels
from lth_kernels.tickets.gfs import fold_gate_, fold_gate_after_act_, select_layer
from lth_kernels.training.rundir import atomic_write_json, atomic_write_text
from lth_kernels.workflows.common.structured import accuracy, finetune, markdown_table, model_cost

log = logging.getLogger(__name__)


def _endless_batches(ds, batch_size: int, device, generator: torch.Generator):
    t = getattr(ds, "tensors", None)
    n = len(ds)
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s:s + batch_size]
            if t is not None:
                yield t[0][idx].to(device), t[1][idx].to(device)
            else:
                items = [ds[int(i)] for i in idx]
                yield (torch.stack([a for a, _ in items]).to(device),
                       torch.as_tensor([b for _, b in items]).to(device))


def _excluded(name: str, exclude) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in exclude)


def gfs_layers(model: nn.Module, example: torch.Tensor, exclude=(),
               streams: bool = False) -> tuple[list[str], dict[str, list[str]]]:
    """GFS layers bottom-up: the gateable modules of the channel graph minus ``exclude`` globs and, with
    ``streams``, each selectable residual stream, named by its first gate module; and stream name -> every module
    carrying that stream's shared gate (a stream is excluded when any of them matches a glob)."""
    g = analyse(model, example)
    names = [n for n in g.gateable() if not _excluded(n, exclude)]
    chosen = {s[0]: s for s in g.streams() if not any(_excluded(n, exclude) for n in s)} if streams else {}
    return sorted([*names, *chosen], key=g.order.index), chosen


def prunable_layers(model: nn.Module, example: torch.Tensor, exclude=(), streams: bool = False) -> list[str]:
    """The names of ``gfs_layers``."""
    return gfs_layers(model, example, exclude, streams)[0]




# a gate after a positively homogeneous activation (f(s x) = s f(x), s >= 0) equals one on the BN output
def gate_points(model: nn.Module, example: torch.Tensor, names: list[str]) -> dict[str, tuple[str, list] | None]:
    """Where each GFS layer's gate sits: ``None`` = on the layer's output (a BN followed by ReLU, or no
    activation module: the gate folds into gamma / beta); ``(module, consumers)`` = after a non-homogeneous
    activation, as the reference gates after ReLU6 (a timm BN+act module such as ``BatchNormAct2d`` is
    already after its activation; otherwise the activation module that alone reads the BN), folded into the
    Conv/Linear layers reading it (``tickets.gfs.fold_gate_after_act_``). Layers whose readers are not all
    Conv2d (groups 1) / Linear keep the gate on the BN output (logged)."""
    g = analyse(model, example)
    mods = dict(model.named_modules())
    nodes = {n.target: n for n in g.gm.graph.nodes if n.op == "call_module"}
    out = {}
    for name in names:
        act = getattr(mods[name], "act", None)
        gate = None
        if act is not None:
            gate = name if not isinstance(act, _HOMOGENEOUS_MODULES) else None
        elif name in nodes and len(nodes[name].users) == 1:
            (user,) = nodes[name].users
            if user.op == "call_module" and not isinstance(mods.get(user.target), _HOMOGENEOUS_MODULES) and \
                    type(mods.get(user.target)).__module__.startswith("torch.nn.modules.activation"):
                gate = user.target
        if gate is None:
            out[name] = None
            continue
        space, pos = g.space_of_module(name), g.order.index(name)
        readers = [(c, g.module_io[c][0][1]) for c in g.order[pos + 1:]
                   if g.module_io[c][0] is not None and g.find(g.module_io[c][0][0]) == space]
        if readers and all(isinstance(mods[c], nn.Linear) or (isinstance(mods[c], nn.Conv2d) and mods[c].groups == 1)
                           for c, _ in readers):
            out[name] = (gate, readers)
        else:
            log.warning("gfs %s: the gate stays on the BN output (readers %s are not all Conv2d/Linear)", name,
                        [c for c, _ in readers])
            out[name] = None
    return out


def layer_finetune_steps(steps: str, n: int, batch_size: int) -> str:
    """The fine-tune after each layer as a step string: a fraction of an epoch (``"0.1ep"``, the reference's
    ``--n_epoch 0.1``) becomes that share of the epoch's batches (at least one); other strings pass through."""
    from lth_kernels.workflows.gfs.hparams import epoch_fraction

    frac = epoch_fraction(steps)
    if frac is None:
        return steps
    return f"{max(1, round(frac * (n // max(1, min(batch_size, n)))))}it" if frac > 0 else "0it"


def gfs_prune(model: nn.Module, train_ds, test_ds, opts, *, batch_size: int, example: torch.Tensor, seed: int = 0,
              device=None, finetune_between: bool = True, eval_ds=None, fixed_size: int = 0,
              progress: bool = True) -> dict:
    """Prune ``model`` in place with GFS, layer by layer; returns ``{"masks", "layers", "dense_acc", "model"}``
    where ``model`` is the narrower dense network (``nn.channel_prune``) and ``masks`` the kept channels.

    The stopping rule evaluates on a fixed class-balanced subset of ``eval_ds`` (the un-augmented training set;
    default ``train_ds``) of ``opts.eval_samples`` examples. With ``opts.target == "current"`` (the reference's
    ``prune_a_layer``) each layer's target is the top-1 of the network as it is when the layer starts (already
    pruned and fine-tuned below it); ``"dense"`` fixes it to the dense network's. ``fixed_size > 0`` grows every
    layer to exactly that many channels instead (Wolfe et al.'s fixed subnetwork size). ``progress``: a bar over
    the layers on a terminal, one start line otherwise."""
    from lth_kernels.workflows.common.structured import balanced_subset

    dev = device or next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    eval_set = balanced_subset(eval_ds if eval_ds is not None else train_ds, opts.eval_samples, seed)

    def evaluate() -> float:
        return accuracy(model, eval_set, device=dev)["acc"]

    dense_acc = evaluate()
    batches = _endless_batches(train_ds, batch_size, dev, gen)
    ft_steps = layer_finetune_steps(opts.layer_finetune_steps, len(train_ds), batch_size)
    masks, layers = {}, []
    names, streams = gfs_layers(model, example.to(dev), opts.exclude, streams=opts.residual_streams)
    gates = gate_points(model, example.to(dev), [n for n in names if n not in streams])
    # a stream's gate sits on every branch that writes it (BN outputs; the stream is homogeneous, see streams())
    gates.update({n: ("stream", streams[n]) for n in names if n in streams})
    bar = Progress(len(names), desc="gfs", unit="layer", enabled=progress, logger=log,
                   line=f"gfs: growing {len(names)} layers bottom-up ({opts.candidates} candidates per step)")
    for name in names:
        gate = gates[name]
        gate_at = None if gate is None else gate[1] if gate[0] == "stream" else gate[0]
        target = dense_acc if opts.target == "dense" else evaluate()
        d = _width(model, name)
        if fixed_size > 0:
            res = select_layer(model, name, batches, num_candidates=opts.candidates, target_acc=None,
                               generator=gen, allow_repeats=opts.allow_repeats, max_steps=min(fixed_size, d),
                               gate_at=gate_at)
        else:
            res = select_layer(model, name, batches, num_candidates=opts.candidates, target_acc=target,
                               tolerance=opts.tolerance, converge_tolerance=opts.converge_tolerance,
                               eval_fn=evaluate, generator=gen, allow_repeats=opts.allow_repeats,
                               gate_at=gate_at)
        restored = res.full and opts.restore_full
        stream = gate is not None and gate[0] == "stream"
        members = gate[1] if stream else [name]  # a stream: every branch carries the gate and the mask
        if restored:  # a full layer is left as it was: the exact dense layer, as set_alpha_to_init does
            pass
        elif gate is None or stream:
            for member in members:
                fold_gate_(model, member, res.alpha)
        else:
            fold_gate_after_act_(model, name, res.alpha, gate[1])
        for member in members:
            masks[member] = res.mask
        layers.append({"layer": f"{name} (stream, {len(gate[1])} branches)" if stream else name,
                       "gate_at": name if gate is None else gate_at,
                       "channels": int(res.alpha.numel()), "kept": res.kept,
                       "steps": len(res.steps), "eval_acc": res.eval_acc, "target_acc": target,
                       "restored_dense": restored,
                       "curve": [{"kept": len({x.chosen for x in res.steps[:i + 1]}), "loss": st.loss,
                                  "eval_acc": st.eval_acc} for i, st in enumerate(res.steps)]})
        log.info("gfs %s: kept %d/%d channels in %d steps (train top-1 %s %%, target %.2f %%)%s", name, res.kept,
                 res.alpha.numel(), len(res.steps), "-" if res.eval_acc is None else f"{100 * res.eval_acc:.2f}",
                 100 * target, " -> dense layer restored" if restored else "")
        if finetune_between and not restored:
            finetune(model, train_ds, test_ds, lr=opts.finetune_lr, steps=ft_steps,
                     batch_size=min(batch_size, len(train_ds)), weight_decay=opts.finetune_weight_decay,
                     masks=channel_param_masks(model, masks), seed=seed, device=dev)
        bar.update()
        bar.note(layer=name, kept=f"{res.kept}/{res.alpha.numel()}")
    bar.close()
    narrow, record = prune_channels(model, masks, example.to(dev))
    return {"masks": masks, "layers": layers, "dense_acc": dense_acc, "model": narrow, "record": record}


def _width(model: nn.Module, name: str) -> int:
    from lth_kernels.tickets.gfs import _channels

    return _channels(model.get_submodule(name))


def final_finetune(model: nn.Module, train_ds, test_ds, hp, *, out_dir: Path | None = None, device=None) -> dict:
    """The final fine-tune of the pruned network: ``hp.finetune`` (its schedule, Nesterov, label smoothing),
    optionally without weight decay on BN and biases, then ``gfs.finetune_tail_steps`` at the constant
    ``gfs.finetune_tail_lr``; returns the last evaluation record (``{}`` when nothing trains)."""
    from lth_kernels.training.steps import split_step_string
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.structured import no_decay_on_bn_and_bias

    opts, metrics = hp.gfs, {}
    phases = [("main", hp.finetune)]
    if split_step_string(opts.finetune_tail_steps, "steps") != (0, 0):
        phases.append(("tail", hp.finetune.replace(lr=opts.finetune_tail_lr, training_steps=opts.finetune_tail_steps,
                                                   lr_schedule="multistep", milestone_steps="", warmup_steps="0it")))
    for phase, tr in phases:
        trainer = Trainer(model, train_ds, test_ds, tr, batch_size=min(hp.dataset.batch_size, len(train_ds)),
                          out_dir=None if out_dir is None else out_dir / phase, device=device,
                          eval_at_start=False, progress=False)
        if opts.finetune_no_decay_bn_bias:
            no_decay_on_bn_and_bias(trainer.optimizer, model)
        metrics = trainer.train().metrics
    return metrics


def prune_run(hp, out: Path, device=None, data=None) -> dict:
    """Pre-train, GFS-prune, fine-tune; writes ``summary.json``, ``table.md``, ``channels.json``."""
    from lth_kernels.training.checkpoint import save_weights
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.plots import plot_gfs
    from lth_kernels.workflows.common.structured import build_data, build_model, example_batch, plain_train_set

    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        print(summary["table"])
        return summary
    train_ds, test_ds, info = data if data is not None else build_data(hp.dataset)
    eval_ds = plain_train_set(hp.dataset, train_ds)
    example = example_batch(train_ds)
    model = build_model(hp.model, info, hp.training.seed)
    trainer = Trainer(model, train_ds, test_ds, hp.training, batch_size=hp.dataset.batch_size,
                      out_dir=out / "pretrain", device=device)
    dense_metrics = trainer.train().metrics
    dense_cost = model_cost(model, example)
    res = gfs_prune(model, train_ds, test_ds, hp.gfs, batch_size=hp.dataset.batch_size, example=example,
                    seed=hp.training.seed, device=trainer.device, eval_ds=eval_ds)
    narrow = res["model"]
    after_gfs = accuracy(narrow, test_ds)["acc"]
    tuned = final_finetune(narrow, train_ds, test_ds, hp, out_dir=out / "finetune", device=trainer.device)
    cost = model_cost(narrow, example)
    save_weights(narrow, out / "pruned.safetensors")
    atomic_write_json(out / "channels.json", res["record"].to_dict())
    rows = [{"model": "dense (pre-trained)", **dense_cost, "test_acc": dense_metrics.get("test_acc")},
            {"model": "GFS subnetwork", **cost, "test_acc": after_gfs},
            {"model": "GFS subnetwork, fine-tuned", **cost, "test_acc": tuned.get("test_acc", after_gfs)}]
    table = markdown_table(rows, [("model", "model"), ("params", "params"), ("flops", "FLOPs/sample"),
                                  ("test_acc", "top-1 %")], percent=("test_acc",))
    table += "\n" + markdown_table(res["layers"], [("layer", "layer"), ("channels", "channels"), ("kept", "kept"),
                                                   ("steps", "GFS steps"), ("target_acc", "target top-1 %"),
                                                   ("eval_acc", "train top-1 % at stop"),
                                                   ("restored_dense", "dense layer restored")],
                                    percent=("target_acc", "eval_acc"))
    plot_gfs(out / "plots" / "gfs.png", res["layers"], hp.gfs.tolerance,
             title=f"GFS on {hp.model.name} / {hp.dataset.name}")
    summary = {"run_dir": str(out), "dense": {**dense_cost, **dense_metrics}, "layers": res["layers"],
               "dense_train_acc": res["dense_acc"], "subnetwork": {**cost, "test_acc_after_gfs": after_gfs,
                                                                   "test_acc_finetuned": tuned.get("test_acc")},
               "table": table}
    atomic_write_text(out / "table.md", table)
    atomic_write_json(summary_path, summary)
    print(table)
    return summary
