"""Shared pieces of the structured-ticket workflows (early-bird, GFS): data/model setup, keeping masked
parameters at zero while training, brief fine-tuning, cost counting and the markdown table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lth_kernels.training.hparams import DatasetHparams, ModelHparams, TrainingHparams
from lth_kernels.training.trainer import Callback, Trainer

log = logging.getLogger(__name__)


def build_data(hp: DatasetHparams, **kwargs):
    from lth_kernels.workflows.common.inputs import open_dataset

    return open_dataset(hp, **kwargs)


def plain_train_set(hp: DatasetHparams, train_ds):
    """The training set without augmentation (for evaluations on training data): ``train_ds`` itself when it
    is in memory (never augmented) or ``hp.augment`` is off, else the same set built with ``augment=False``."""
    if getattr(train_ds, "tensors", None) is not None or not hp.augment:
        return train_ds
    return build_data(hp.replace(augment=False))[0]


def build_model(hp: ModelHparams, info, seed: int) -> nn.Module:
    from lth_kernels.workflows.common.inputs import make_model

    model = make_model(hp, info, seed=seed)
    return init_bn_(model, getattr(hp, "bn_init", "model"))


@torch.no_grad()
def init_bn_(model: nn.Module, kind: str) -> nn.Module:
    """Re-initialise every affine BatchNorm of ``model`` in place: ``"0.5"`` (gamma 0.5, beta 0: the early-bird
    reference's VGG / PreResNet), ``"uniform"`` (gamma ~ U[0, 1), beta 0: open_lth), ``"ones"`` (1, 0);
    ``"model"`` leaves the builder's initialisation."""
    fills = {"0.5": lambda w: w.fill_(0.5), "uniform": lambda w: w.uniform_(0.0, 1.0), "ones": lambda w: w.fill_(1.0)}
    if kind == "model":
        return model
    if kind not in fills:
        raise ValueError(f"bn_init: expected one of 0.5, uniform, ones, model, got {kind!r}")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            fills[kind](m.weight)
            m.bias.zero_()
    return model


def example_batch(ds, n: int = 2) -> torch.Tensor:
    """The first ``n`` inputs of a data set as one batch (for tracing and FLOP counting)."""
    t = getattr(ds, "tensors", None)
    if t is not None:
        return t[0][:n].clone()
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def subset(ds, m: int, seed: int = 0):
    """``m`` training examples drawn without replacement (seeded); in-memory sets stay in memory."""
    if not 1 <= m <= len(ds):
        raise ValueError(f"m: training-set size must be in [1, {len(ds)}], got {m}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:m].sort().values
    t = getattr(ds, "tensors", None)
    if t is not None:
        from lth_kernels.data.tensor import TensorImageDataset

        return TensorImageDataset(t[0][idx].contiguous(), t[1][idx].contiguous())
    return torch.utils.data.Subset(ds, idx.tolist())


def labels_of(ds) -> torch.Tensor:
    """The class labels of a data set as one int64 tensor (in-memory tensors, ``targets`` of torchvision /
    ImageFolder sets, ``Subset`` of either; otherwise read item by item)."""
    if isinstance(ds, torch.utils.data.Subset):
        return labels_of(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    t = getattr(ds, "tensors", None)
    if t is not None:
        return t[1].long()
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.long)


def balanced_subset(ds, n: int, seed: int = 0):
    """``n`` examples spread evenly over the classes (seeded): each class's examples in a random order, taken
    round-robin over the classes (so class counts differ by at most one while every class has examples
    left). The stopping rule of GFS evaluates on this set; the first ``n`` in data-set order would cover only a
    few classes of a class-sorted set such as ImageFolder."""
    labels = labels_of(ds)
    n = min(int(n), len(labels))
    if n < 1:
        raise ValueError(f"n: expected >= 1 examples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    per_class = [idx[torch.randperm(idx.numel(), generator=gen)]
                 for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique(sorted=True))]
    rank = torch.cat([torch.arange(idx.numel()) for idx in per_class])
    order = torch.cat(per_class)[torch.sort(rank, stable=True).indices]  # round k: the k-th of every class
    idx = order[:n].sort().values
    t = getattr(ds, "tensors", None)
    if t is not None:
        from lth_kernels.data.tensor import TensorImageDataset

        return TensorImageDataset(t[0][idx].contiguous(), t[1][idx].contiguous())
    return torch.utils.data.Subset(ds, idx.tolist())


def no_decay_on_bn_and_bias(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Regroup ``optimizer`` in place (the same object, so whatever holds it keeps working): BN parameters
    and biases get weight decay 0, the rest keeps the group's decay (``mobile2_finetune.py`` of greedy forward
    selection does this for its final fine-tune)."""
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) for p in m.parameters()}
    no_decay = {id(p) for name, p in model.named_parameters() if name.endswith("bias") or id(p) in bn}
    (group,) = optimizer.param_groups  # a fresh optimizer of the trainer: one group
    params = group.pop("params")
    optimizer.param_groups.clear()
    for chosen, extra in ((False, {}), (True, {"weight_decay": 0.0})):
        members = [p for p in params if (id(p) in no_decay) == chosen]
        if members:
            optimizer.add_param_group({**group, **extra, "params": members})


class ParamMaskCallback(Callback):
    """Keeps ``param * mask == param`` during training: applied at the start and after every optimizer
    step, to the parameter and to its optimizer state of the same shape (momentum would otherwise revive a
    zeroed entry). ``masks``: parameter name -> 0/1 tensor broadcastable to the parameter (channel masks of
    ``nn.channel_prune.channel_param_masks`` or unstructured ticket masks)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = sorted(set(masks) - set(params))
        if missing:
            raise ValueError(f"masks: {missing[:3]} are not parameters of the model")
        self.pairs = [(params[n], m) for n, m in masks.items()]
        self._ready = False

    @torch.no_grad()
    def _apply(self, optimizer) -> None:
        if not self._ready:
            self.pairs = [(p, m.to(device=p.device, dtype=p.dtype)) for p, m in self.pairs]
            self._ready = True
        for p, m in self.pairs:
            p.mul_(m)
            for v in (optimizer.state.get(p) or {}).values() if optimizer is not None else ():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.mul_(m)

    def on_train_start(self, trainer, step):
        self._apply(trainer.optimizer)

    def on_after_optimizer_step(self, trainer, step):
        self._apply(trainer.optimizer)


def finetune(model: nn.Module, train_ds, test_ds, *, lr: float, steps: str, batch_size: int, momentum: float = 0.9,
             weight_decay: float = 4e-5, masks: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
             device=None, out_dir=None) -> dict:
    """Constant-lr SGD for ``steps`` (e.g. ``"20it"``), masked parameters kept at zero; returns the last
    evaluation record (``{}`` when ``steps`` is zero)."""
    from lth_kernels.training.steps import split_step_string

    ep, it = split_step_string(steps, "steps")
    if ep == 0 and it == 0:
        return {}
    hp = TrainingHparams(lr=lr, momentum=momentum, weight_decay=weight_decay, training_steps=steps,
                         eval_every="0it", data_order_seed=seed, seed=seed, amp="off")
    callbacks = [ParamMaskCallback(model, masks)] if masks else []
    trainer = Trainer(model, train_ds, test_ds, hp, batch_size=batch_size, callbacks=callbacks, device=device,
                      eval_at_start=False, progress=False, out_dir=out_dir)
    return trainer.train().metrics


@torch.no_grad()
def accuracy(model: nn.Module, ds, *, batch_size: int = 512, device=None, limit: int | None = None) -> dict:
    """Loss and top-1 accuracy of ``model`` (eval mode) on ``ds`` (its first ``limit`` examples)."""
    import torch.nn.functional as F

    dev = device or next(model.parameters()).device
    t = getattr(ds, "tensors", None)
    n = len(ds) if limit is None else min(limit, len(ds))
    was = model.training
    model.eval()
    loss = correct = 0.0
    for start in range(0, n, batch_size):
        if t is not None:
            x, y = t[0][start:start + batch_size][: n - start], t[1][start:start + batch_size][: n - start]
        else:
            items = [ds[i] for i in range(start, min(start + batch_size, n))]
            x, y = torch.stack([a for a, _ in items]), torch.as_tensor([b for _, b in items])
        out = model(x.to(dev)).float()
        y = y.to(dev)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
    model.train(was)
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1)}


def model_cost(model: nn.Module, example: torch.Tensor) -> dict:
    """Parameters and forward FLOPs per sample."""
    from lth_kernels.nn.channel_prune import count_flops, count_parameters

    example = example.to(next(model.parameters()).device)
    return {"params": count_parameters(model), "flops": count_flops(model, example) // example.shape[0]}


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]], percent: Sequence[str] = ()) -> str:
    """``columns``: (key, header). Floats get 4 significant digits, the keys in ``percent`` (fractions, e.g.
    accuracies) are shown in % with 2 decimals; missing values are ``-``."""

    def fmt(v, key):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}" if key in percent else f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), k) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def save_figure(fig, path) -> None:
    """Write a matplotlib figure atomically (temp file + rename)."""
    import io

    from lth_kernels.training.rundir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
