"""The one Trainer: step-based training of a classifier, with rewinding, resume and DDP.

Steps are absolute: state "at step s" is the model after s optimizer steps; step s uses learning rate
``schedule.lr(s)`` and batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (see
``data_order``). ``train(start_step=K)`` continues a rewound model with the identical schedule and data
order, and a rerun of a killed ``train`` resumes from the rolling ``checkpoint.pt`` bit-exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels._util import Progress
from lth_kernels.training import distributed as dist_utils
from lth_kernels.training.callbacks import Callback
from lth_kernels.training.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    model_state,
    remove_checkpoint,
    save_checkpoint,
    save_step,
    step_paths,
)
from lth_kernels.training.data_order import EpochSampler
from lth_kernels.training.ema import WeightAverage
from lth_kernels.training.feed import Feed
from lth_kernels.training.hparams import HparamsError, TrainingHparams
from lth_kernels.training.interrupt import SigtermFlag, TrainingInterrupted
from lth_kernels.training.masks import MaskGuard
from lth_kernels.training.metrics import MetricsLogger, read_metrics
from lth_kernels.training.rundir import atomic_write_json
from lth_kernels.training.schedule import LRSchedule
from lth_kernels.training.seed import get_rng_state, set_rng_state
from lth_kernels.training.steps import Step, parse_step_list, parse_steps

log = logging.getLogger(__name__)
# Per-evaluation lines go to a child logger, so that a CLI can keep them quiet by default while the
# resume line and the stage lines stay visible.
eval_log = logging.getLogger(f"{__name__}.eval")

DONE = "done.json"
METRICS = "metrics.jsonl"



@dataclass
class TrainResult:
    step: int  # the state the model is in (== end step unless a callback stopped early)
    metrics: dict = field(default_factory=dict)  # the last evaluation record
    resumed_from: int | None = None  # checkpoint step a killed run was resumed from
    skipped: bool = False  # the stage was already done: final weights loaded, nothing trained


def build_optimizer(params, hp: TrainingHparams) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                               weight_decay=hp.weight_decay)
    cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=hp.lr, betas=(hp.momentum, 0.999), weight_decay=hp.weight_decay)


class Trainer:
    """Train ``model`` on ``train_ds``, evaluating top-1 accuracy and loss on ``test_ds`` (and ``val_ds``).

    Args:
        model: an ``nn.Module`` returning logits ``[B, C]``; moved to ``device``; DDP-wrapped under torchrun.
        train_ds, test_ds: map-style data sets of ``(input, label)``. In-memory sets with
            ``.tensors = (inputs, labels)`` are held on the device and indexed there (the device pipeline, unless
            their ``.pipeline`` is ``"loader"``); their optional ``batch_transform(x, generator)`` makes the model
            input of each batch (normalisation, augmentation). Other sets go through DataLoader workers; see
            ``feed``.
        training: optimizer, schedule, length, AMP, seeds, evaluation interval.
        batch_size: global batch size (split over ranks).
        out_dir: where ``metrics.jsonl``, ``checkpoint.pt``, ``step_<K>.*`` and ``done.json`` go; None keeps
            nothing on disk (no resume).
        save_steps: steps (ints or step strings) whose weights + optimizer state are saved, e.g. the rewind
            step; the final step is always saved when ``out_dir`` is set.
        callbacks: ``Callback`` instances.
        mask_mode: ``auto`` | ``always`` | ``off``, see ``masks.MaskGuard``.
        loss_fn: ``(logits, labels) -> loss``; default cross entropy with ``training.label_smoothing`` (soft
            float targets, as mixup makes them, are taken as they are: they carry their own smoothing).
        batch_augment: ``(x, y, step) -> (x, y)`` applied to each training batch on the device before the
            forward pass, e.g. ``augment.BatchAugment`` (mixup, cutmix, random erasing).
        num_workers: DataLoader workers of the loader pipeline; None: the data set's ``.num_workers`` (set by
            ``create_dataset``), else 0.
        channels_last: channels-last weights and inputs for conv nets; None: on CUDA when the model has a
            2-d convolution (cuDNN's fast layout for them).
        compile_options: keyword arguments of ``torch.compile`` (``mode``, ``backend``, ...) when
            ``training.compile`` is on.
        val_ds: a validation set (a hold-out of the training split) evaluated with the test set: its
            ``val_loss`` / ``val_acc`` select models without looking at the test set.
    """

    def __init__(self, model: nn.Module, train_ds, test_ds, training: TrainingHparams, *, batch_size: int,
                 out_dir: str | Path | None = None, device: str | torch.device | None = None,
                 save_steps=(), callbacks=(), mask_mode: str = "auto", eval_batch_size: int | None = None,
                 num_workers: int | None = None, eval_at_start: bool = True, loss_fn=None, progress: bool = True,
                 batch_augment=None, channels_last: bool | None = None, compile_options: dict | None = None,
                 val_ds=None):
        self.hp = training
        self.device = torch.device(device) if device is not None else (
            torch.device(f"cuda:{dist_utils.local_rank()}") if torch.cuda.is_available() else torch.device("cpu"))
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.is_main = self.rank == 0
        self.channels_last = _wants_channels_last(model, self.device) if channels_last is None else channels_last
        self.model = model.to(self.device, memory_format=torch.channels_last) if self.channels_last \
            else model.to(self.device)
        self.ddp_model = dist_utils.wrap_ddp(self.model, self.device)
        self.ema = WeightAverage(self.model, training.ema_decay) if training.ema_decay else None
        # Compiled forward (and, through AOTAutograd, backward) for training steps only; evaluation stays eager.
        self.train_model = torch.compile(self.ddp_model, **(compile_options or {})) if training.compile \
            else self.ddp_model
        self.train_ds, self.test_ds, self.val_ds = train_ds, test_ds, val_ds
        self.sampler = EpochSampler(len(train_ds), batch_size, training.data_order_seed, self.rank, self.world_size,
                                    training.repeated_augment)
        self.steps_per_epoch = self.sampler.num_batches
        self.total_steps = self.to_step(training.training_steps, "--training.training_steps")
        self.eval_every = self.to_step(training.eval_every, "--training.eval_every")
        self.schedule = LRSchedule(
            training.lr, self.total_steps, training.lr_schedule,
            tuple(s.iteration for s in parse_step_list(training.milestone_steps, self.steps_per_epoch,
                                                       "--training.milestone_steps")),
            training.gamma, self.to_step(training.warmup_steps, "--training.warmup_steps"), training.min_lr)
        self.optimizer = build_optimizer(self.model.parameters(), training)
        self.amp_dtype = self._amp_dtype(training.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.guard = MaskGuard(self.model, self.optimizer, mask_mode)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_steps = {self.to_step(s, "save_steps") for s in save_steps}
        self.callbacks = list(callbacks)
        self.eval_batch_size = eval_batch_size or self.sampler.local_batch_size
        self.num_workers = getattr(train_ds, "num_workers", 0) if num_workers is None else num_workers
        self.eval_at_start, self.progress = eval_at_start, progress
        self.loss_fn = loss_fn or functools.partial(_cross_entropy, label_smoothing=training.label_smoothing)
        self.batch_augment = batch_augment
        self.metrics = MetricsLogger(self.out_dir / METRICS if self.out_dir else None, enabled=self.is_main)
        self.step = 0
        self._stop = False
        self.feed = Feed(train_ds, test_ds, self.sampler, self.device, num_workers=self.num_workers,
                         eval_batch_size=self.eval_batch_size, rank=self.rank, world_size=self.world_size,
                         val_ds=val_ds)

    # ---------------------------------------------------------------------------------------------- setup
    def to_step(self, value: str | int | Step, flag: str = "step") -> int:
        """A step string / int / Step -> absolute iteration in this trainer's epochs."""
        return parse_steps(value, self.steps_per_epoch, flag).iteration

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"--training.amp: fp16 needs a CUDA device, got device {self.device}")
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def request_stop(self) -> None:
        """End training after the current step, or before it when called from ``on_epoch_start`` /
        ``on_step_start`` (e.g. an early-bird ticket was found); the final state is evaluated and saved."""
        self._stop = True

    # ---------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, split: str = "test", model: nn.Module | None = None) -> dict:
        """Loss (plain cross entropy, mean) and top-1 accuracy over the whole ``split`` set, ``"test"`` or
        ``"val"`` (all ranks): ``{"<split>_loss", "<split>_acc", "<split>_n"}``, of the trained model or of
        ``model`` (e.g. the weight average ``self.ema.module``)."""
        if split not in ("test", "val"):
            raise ValueError(f"split: expected 'test' or 'val', got {split!r}")
        if split == "val" and self.val_ds is None:
            raise ValueError("split: 'val' needs a Trainer built with val_ds")
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        acc = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        # a bar on a terminal only: an evaluation is part of its stage, whose start line the log already has
        with Progress(None, desc=f"evaluate {split}", unit="batch", enabled=self.progress and self.is_main,
                      log_start=False) as bar:
            for x, y in self.feed.test_batches(split):
                x = self._layout(x)
                with self._autocast():
                    out = model(x)
                acc[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
                acc[1] += (out.argmax(dim=1) == y).sum()
                acc[2] += y.numel()
                bar.update()
        dist_utils.all_reduce_sum(acc)
        model.train(was_training)
        loss, correct, n = acc.tolist()
        return {f"{split}_loss": loss / max(n, 1), f"{split}_acc": correct / max(n, 1), f"{split}_n": int(n)}

    # ---------------------------------------------------------------------------------------------- state
    def _masks(self) -> dict[str, torch.Tensor]:
        return {name: m.mask.detach().cpu().clone() for name, m in self.guard.modules}

    def _load_masks(self, masks: dict[str, torch.Tensor]) -> None:
        mods = dict(self.guard.modules)
        for name, mask in masks.items():
            m = mods[name]
            if hasattr(m, "set_mask"):
                m.set_mask(mask.to(m.mask.device))
            else:
                with torch.no_grad():
                    m.mask.copy_(mask)

    def state_dict(self, start_step: int, end_step: int) -> dict:
        return {
            "format": 1, "step": self.step, "start_step": start_step, "end_step": end_step,
            "model": model_state(self.model), "masks": self._masks(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": get_rng_state(), "metrics_pos": self.metrics.position(),
            "window": {**{k: v for k, v in self._window.items() if k != "t0"},
                       "train_time": self._window["train_time"] + time.perf_counter() - self._window["t0"]},
            "elapsed": self._elapsed(), "callbacks": [cb.state_dict() for cb in self.callbacks],
            "training": self.hp.to_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._load_masks(state["masks"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for cb, s in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(s)
        self.step = state["step"]
        self.metrics.truncate(state["metrics_pos"])
        self._window = {**state["window"], "t0": time.perf_counter()}
        self._elapsed_before = state["elapsed"]
        set_rng_state(state["rng"])

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t_start

    # ---------------------------------------------------------------------------------------------- train
    def train(self, end_step: str | int | None = None, start_step: str | int = 0) -> TrainResult:
        """Train from state ``start_step`` (the model must already hold that state, e.g. rewound weights)
        to ``end_step`` (default: ``training.training_steps``). With ``out_dir``: a finished run is not
        re-run (its final weights are loaded), and a killed run resumes from ``checkpoint.pt``."""
        start = self.to_step(start_step, "start_step")
        end = self.total_steps if end_step is None else self.to_step(end_step, "end_step")
        if not start <= end:
            raise ValueError(f"start_step: {start} is after end_step {end}")
        done = self.out_dir / DONE if self.out_dir else None
        if done is not None and done.exists():
            return self._load_done(done, start, end)
        self._t_start, self._elapsed_before, self._stop = time.perf_counter(), 0.0, False
        self._window = {"loss_sum": 0.0, "loss_n": 0, "samples": 0, "train_time": 0.0, "t0": time.perf_counter()}
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.step, resumed, self._segment = start, None, (start, end)
        ckpt = load_checkpoint(self.out_dir / CHECKPOINT) if self.out_dir else None
        if ckpt is not None and not self._resumable(ckpt, start, end):
            log.warning("ignoring %s: it was written by a run with other steps or training hparams",
                        self.out_dir / CHECKPOINT)
            ckpt = None
        if ckpt is not None:
            self.load_state_dict(ckpt)
            resumed = self.step
            log.info("resuming from %s at step %d", self.out_dir / CHECKPOINT, self.step)
        else:
            self.metrics.truncate(0)
            dist_utils.broadcast_masks(self.model)
            self._sync_from_rank0()
            if self.ema is not None:
                self.ema.reset(self.model)  # the average starts at the weights this training starts from
        for cb in self.callbacks:
            cb.on_train_start(self, self.step)
        first = {}
        if resumed is None:
            self._maybe_save_step()
            if self.eval_at_start:
                first = self._eval_and_log(end)
        try:
            with SigtermFlag() as self._sigterm:
                last = self._loop(end) or first
        finally:
            self.feed.close()
        return self._finish(start, end, resumed, last)

    def _interrupt(self, end: int) -> None:
        if self.out_dir is not None:
            self._fold_loss()
            if self.is_main:
                save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict(*self._segment))
        dist_utils.barrier()
        raise TrainingInterrupted(f"stopped by SIGTERM at step {self.step} of {end}"
                                  + (f"; checkpoint in {self.out_dir}: rerun to resume" if self.out_dir else ""))

    def _resumable(self, ckpt: dict, start: int, end: int) -> bool:
        return ((ckpt.get("start_step"), ckpt.get("end_step")) == (start, end) and start < ckpt["step"] <= end
                and self._same_training(ckpt.get("training")))

    def _same_training(self, saved) -> bool:
        """Whether a checkpoint's training hparams are ours (hparams added since it was written take their
        defaults)."""
        try:
            return type(self.hp).from_dict(saved) == self.hp
        except (HparamsError, TypeError):
            return False

    def _sync_from_rank0(self) -> None:
        if not dist_utils.is_distributed():
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(t.data, src=0)

    def _loop(self, end: int) -> dict:
        spe, last = self.steps_per_epoch, {}
        bar = Progress(end, initial=self.step, desc=self.out_dir.name if self.out_dir is not None else None,
                       enabled=self.progress and self.is_main, logger=log,
                       line=f"training {self.out_dir or '(no run directory)'}: step {self.step} -> {end} "
                            f"({(end - self.step) / self.steps_per_epoch:.1f} epochs)")
        self.ddp_model.train()
        batches = None
        while self.step < end:
            s = self.step
            if batches is None or s % spe == 0:
                if s % spe == 0:
                    for cb in self.callbacks:
                        cb.on_epoch_start(self, s // spe)
                batches = self.feed.train_batches(s // spe, s % spe)
            for cb in self.callbacks:
                cb.on_step_start(self, s)
            if self._stop:  # requested by an epoch/step-start hook: this step is not taken
                break
            x, y = next(batches)
            self._train_step(x, y, self.schedule.lr(s))
            self.step = s + 1
            for cb in self.callbacks:
                cb.on_after_optimizer_step(self, self.step)
            self.guard.after_step()
            if self.ema is not None:
                self.ema.update(self.model)
            self._maybe_save_step()
            if self.step == end or self._stop or (self.eval_every and self.step % self.eval_every == 0):
                last = self._eval_and_log(end)
                bar.note(test_acc=f"{last['test_acc']:.4f}", loss=f"{last['train_loss']:.4g}")
            for cb in self.callbacks:
                cb.on_step_end(self, self.step)
            if self.step % spe == 0:
                for cb in self.callbacks:
                    cb.on_epoch_end(self, self.step // spe - 1)
                if self.out_dir is not None and self.step < end and not self._stop:
                    self._fold_loss()  # on every rank: the checkpoint carries the global running loss
                    if self.is_main:
                        save_checkpoint(self.out_dir / CHECKPOINT, self.state_dict(*self._segment))
            bar.update(1)
            if self._stop:
                break
            if self._sigterm.agreed(self.device):
                bar.close()
                self._interrupt(end)
        bar.close()
        if self._stop and last.get("step") != self.step:
            last = self._eval_and_log(end)
        return last

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.batch_augment is not None:
            x, y = self.batch_augment(x, y, self.step)
        with self._autocast():
            out = self.train_model(self._layout(x))
        loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.hp.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.hp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.grad_clip)
            self.optimizer.step()
        self._loss_sum += loss.detach().double()
        self._window["loss_n"] += 1
        self._window["samples"] += y.shape[0] * self.world_size
        self._last_lr = lr

    def _fold_loss(self) -> None:
        """Move the on-device running loss (mean over ranks) into the window; syncs the device, so a
        throughput window measured right after ends on finished work."""
        dist_utils.all_reduce_sum(self._loss_sum)
        self._window["loss_sum"] += self._loss_sum.item() / self.world_size
        self._loss_sum.zero_()

    def _eval_and_log(self, end: int) -> dict:
        self._fold_loss()
        w = self._window
        w["train_time"] += time.perf_counter() - w["t0"]
        record = {
            "step": self.step, "epoch": self.step / self.steps_per_epoch,
            "train_loss": w["loss_sum"] / w["loss_n"] if w["loss_n"] else None,
            "lr": getattr(self, "_last_lr", self.schedule.lr(self.step)),
            "samples_per_s": w["samples"] / w["train_time"] if w["samples"] and w["train_time"] > 0 else None,
            **self.evaluate(),
            **(self.evaluate("val") if self.val_ds is not None else {}),
            **({f"ema_{k}": v for k, v in self.evaluate(model=self.ema.synced(self.model)).items()}
               if self.ema is not None else {}),
        }
        if self.guard.modules:
            self.guard.verify()
            kept = sum(int(m.mask.bool().sum()) for _, m in self.guard.modules)
            total = sum(m.mask.numel() for _, m in self.guard.modules)
            record["mask_density"] = kept / total
        record["elapsed_s"] = self._elapsed()
        self.metrics.log(record)
        if self.is_main:
            eval_log.info("step %d/%d | epoch %.2f | train_loss %s | test_loss %.4f | test_acc %.4f | lr %.3g",
                     self.step, end, record["epoch"], _fmt(record["train_loss"]), record["test_loss"],
                     record["test_acc"], record["lr"])
        for cb in self.callbacks:
            cb.on_eval(self, self.step, record)
        self._window = {"loss_sum": 0.0, "loss_n": 0, "samples": 0, "train_time": 0.0, "t0": time.perf_counter()}
        return record

    def _maybe_save_step(self) -> None:
        if self.out_dir is None or self.step not in self.save_steps or not self.is_main:
            return
        if not step_paths(self.out_dir, self.step)[0].exists():
            save_step(self.out_dir, self.step, self.model, self.optimizer)

    def _finish(self, start: int, end: int, resumed: int | None, last: dict) -> TrainResult:
        if self.out_dir is not None and self.is_main:
            save_step(self.out_dir, self.step, self.model, self.optimizer)
            if self.ema is not None:
                self.ema.save(self.out_dir, self.step, self.model)
            atomic_write_json(self.out_dir / DONE, {"start_step": start, "end_step": end, "step": self.step,
                                                    "metrics": last})
            remove_checkpoint(self.out_dir / CHECKPOINT)
        dist_utils.barrier()
        for cb in self.callbacks:
            cb.on_train_end(self, self.step)
        return TrainResult(self.step, last, resumed, False)

    def _load_done(self, done: Path, start: int, end: int) -> TrainResult:
        import json

        info = json.loads(done.read_text())
        if (info["start_step"], info["end_step"]) != (start, end):
            raise FileExistsError(f"{done} records a run from step {info['start_step']} to {info['end_step']}, "
                                  f"not {start} to {end}; use another out_dir")
        from lth_kernels.training.checkpoint import load_step

        load_step(self.out_dir, info["step"], self.model)
        self.step = info["step"]
        return TrainResult(self.step, info["metrics"], None, True)


def _wants_channels_last(model: nn.Module, device: torch.device) -> bool:
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _cross_entropy(out: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(out, y, label_smoothing=0.0 if y.is_floating_point() else label_smoothing)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


__all__ = ["Callback", "TrainResult", "Trainer", "TrainingInterrupted", "build_optimizer", "read_metrics"]
