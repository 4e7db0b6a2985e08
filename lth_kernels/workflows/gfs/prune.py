"""GFS over a whole model (``gfs_prune``) and the single pruning run of ``lth gfs``."""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

import torch
from torch import nn

from lth_kernels.nn.channel_prune import analyse, channel_param_masks, prune_channels
from lth_kernels.tickets.gfs import fold_gate_, select_layer
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


def prunable_layers(model: nn.Module, example: torch.Tensor, exclude=()) -> list[str]:
    """GFS layers: the gateable modules of the channel graph (bottom-up), minus ``exclude`` globs."""
    names = analyse(model, example).gateable()
    return [n for n in names if not any(fnmatch.fnmatchcase(n, g) for g in exclude)]


def gfs_prune(model: nn.Module, train_ds, test_ds, opts, *, batch_size: int, example: torch.Tensor, seed: int = 0,
              device=None, finetune_between: bool = True) -> dict:
    """Prune ``model`` in place with GFS, layer by layer; returns ``{"masks", "layers", "dense_acc", "model"}``
    where ``model`` is the narrower dense network (``nn.channel_prune``) and ``masks`` the kept channels."""
    dev = device or next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    eval_n = min(opts.eval_samples, len(train_ds))
    dense_acc = accuracy(model, train_ds, limit=eval_n, device=dev)["acc"]
    batches = _endless_batches(train_ds, batch_size, dev, gen)
    masks, layers = {}, []
    for name in prunable_layers(model, example, opts.exclude):
        res = select_layer(model, name, batches, num_candidates=opts.candidates, target_acc=dense_acc,
                           tolerance=opts.tolerance, converge_tolerance=opts.converge_tolerance,
                           eval_fn=lambda: accuracy(model, train_ds, limit=eval_n, device=dev)["acc"],
                           generator=gen, allow_repeats=opts.allow_repeats)
        fold_gate_(model, name, res.alpha)
        masks[name] = res.mask
        layers.append({"layer": name, "channels": int(res.alpha.numel()), "kept": res.kept,
                       "steps": len(res.steps), "eval_acc": res.eval_acc})
        log.info("gfs %s: kept %d/%d channels in %d steps (train top-1 %s, dense %.4f)", name, res.kept,
                 res.alpha.numel(), len(res.steps), "-" if res.eval_acc is None else f"{res.eval_acc:.4f}",
                 dense_acc)
        if finetune_between:
            finetune(model, train_ds, test_ds, lr=opts.finetune_lr, steps=opts.layer_finetune_steps,
                     batch_size=min(batch_size, len(train_ds)), weight_decay=opts.finetune_weight_decay,
                     masks=channel_param_masks(model, masks), seed=seed, device=dev)
    narrow, record = prune_channels(model, masks, example.to(dev))
    return {"masks": masks, "layers": layers, "dense_acc": dense_acc, "model": narrow, "record": record}


def prune_run(hp, out: Path, device=None, data=None) -> dict:
    """Pre-train, GFS-prune, fine-tune; writes ``summary.json``, ``table.md``, ``channels.json``."""
    from lth_kernels.training.checkpoint import save_weights
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.structured import build_data, build_model, example_batch

    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        print(summary["table"])
        return summary
    train_ds, test_ds, info = data if data is not None else build_data(hp.dataset)
    example = example_batch(train_ds)
    model = build_model(hp.model, info, hp.training.seed)
    trainer = Trainer(model, train_ds, test_ds, hp.training, batch_size=hp.dataset.batch_size,
                      out_dir=out / "pretrain", device=device)
    dense_metrics = trainer.train().metrics
    dense_cost = model_cost(model, example)
    res = gfs_prune(model, train_ds, test_ds, hp.gfs, batch_size=hp.dataset.batch_size, example=example,
                    seed=hp.training.seed, device=trainer.device)
    narrow = res["model"]
    after_gfs = accuracy(narrow, test_ds)["acc"]
    tuned = finetune(narrow, train_ds, test_ds, lr=hp.gfs.finetune_lr, steps=hp.gfs.finetune_steps,
                     batch_size=hp.dataset.batch_size, weight_decay=hp.gfs.finetune_weight_decay,
                     seed=hp.training.seed, device=trainer.device, out_dir=out / "finetune")
    cost = model_cost(narrow, example)
    save_weights(narrow, out / "pruned.safetensors")
    atomic_write_json(out / "channels.json", res["record"].to_dict())
    rows = [{"model": "dense (pre-trained)", **dense_cost, "test_acc": dense_metrics.get("test_acc")},
            {"model": "GFS subnetwork", **cost, "test_acc": after_gfs},
            {"model": "GFS subnetwork, fine-tuned", **cost, "test_acc": tuned.get("test_acc", after_gfs)}]
    table = markdown_table(rows, [("model", "model"), ("params", "params"), ("flops", "FLOPs/sample"),
                                  ("test_acc", "top-1")])
    table += "\n" + markdown_table(res["layers"], [("layer", "layer"), ("channels", "channels"), ("kept", "kept"),
                                                   ("steps", "GFS steps"), ("eval_acc", "train top-1 at stop")])
    summary = {"run_dir": str(out), "dense": {**dense_cost, **dense_metrics}, "layers": res["layers"],
               "dense_train_acc": res["dense_acc"], "subnetwork": {**cost, "test_acc_after_gfs": after_gfs,
                                                                   "test_acc_finetuned": tuned.get("test_acc")},
               "table": table}
    atomic_write_text(out / "table.md", table)
    atomic_write_json(summary_path, summary)
    print(table)
    return summary
