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


def build_model(hp: ModelHparams, info, seed: int) -> nn.Module:
    from lth_kernels.workflows.common.inputs import make_model

    return make_model(hp, info, seed=seed)


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


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (key, header). Floats get 4 significant digits; missing values are ``-``."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def save_figure(fig, path) -> None:
    """Write a matplotlib figure atomically (temp file + rename)."""
    import io

    from lth_kernels.training.rundir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
