"""The runner of ``lth data-ticket`` (see the package ``data_ticket`` for the run layout). Every stage is idempotent:
it is skipped when its output exists, and the Trainer resumes a killed stage from its checkpoint."""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
import zlib
from pathlib import Path

import torch

from lth_kernels.models import create_model
from lth_kernels.nn import ticketize_vit
from lth_kernels.training.augment import BatchAugment
from lth_kernels.training.checkpoint import load_step, step_paths
from lth_kernels.training.distributed import is_main_process
from lth_kernels.training.metrics import read_metrics
from lth_kernels.training.rundir import atomic_write_json, prepare_run_dir
from lth_kernels.training.seed import seed_everything
from lth_kernels.training.steps import parse_steps
from lth_kernels.training.trainer import Trainer
from lth_kernels.workflows.common.inputs import MODEL_FIELDS, as_flags, open_dataset
from lth_kernels.workflows.data_ticket import students
from lth_kernels.workflows.data_ticket.hparams import WORKFLOW, DataTicketHparams
from lth_kernels.workflows.data_ticket.report import (
    STABILITY,
    export_tickets,
    plot_accuracy_vs_keep,
    plot_stability,
    plot_tickets,
    write_summary,
)
from lth_kernels.workflows.data_ticket.selector import KeepRateClock, PatchSelector
from lth_kernels.workflows.data_ticket.sizes import parse_drop_blocks
from lth_kernels.workflows.data_ticket.stability import augmentation_stability, checkpoint_stability, stability_record


def run_data_ticket(hp: DataTicketHparams, root: str = "runs", *, export: bool = False, **kwargs):
    """Run (or resume) the workflow for ``hp`` under ``root``; returns the run directory (a ``Path``).

    ``export`` writes each keep rate's test-split tickets; ``kwargs`` go to ``DataTicketRunner``
    (``device``, ``progress``, ``data`` = ``(train, test, info)`` instead of building ``hp.dataset``).
    """
    from lth_kernels.workflows.data_ticket.runner import DataTicketRunner

    return DataTicketRunner(hp, root=root, export=export, **kwargs).run()


log = logging.getLogger(__name__)


EVAL = "eval.json"


SPEED = "speed.json"


EVAL_SEED = 12345  # the random-patch evaluation draws the same patches for every student


def keep_dir_name(r: float) -> str:
    return f"keep_{r:g}"


def _first_images(ds, n: int) -> torch.Tensor:
    t = getattr(ds, "tensors", None)
    if t is not None:
        return t[0][:n]
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def throughputs(fns: dict, batch: int, rounds: int = 7) -> dict[str, float]:
    """Images per second of each ``fn()`` (one batch of ``batch`` images) under inference mode: after one
    warm-up call each, the functions are timed in turn, ``rounds`` times, and the median is kept. Taking
    turns spreads the load of other processes on a shared machine evenly over the candidates."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t0)
    return {k: batch / sorted(v)[len(v) // 2] for k, v in times.items()}


class DataTicketRunner:
    def __init__(self, hp: DataTicketHparams, root: str = "runs", *, export: bool = False, device=None,
                 progress: bool = True, data=None):
        self.hp, self.root, self.export = hp, root, export
        self.device = device
        self.progress = progress
        self.data = data

    # ------------------------------------------------------------------------------------------ helpers
    def _trainer(self, model, training, out_dir: Path, callbacks=(), save_steps=()) -> Trainer:
        train, test, info = self.data
        aug = self.hp.augment
        # One recipe for every training of the run (dense ViT, selector fine-tune, students), as DeiT/EViT.
        batch_augment = BatchAugment(aug, info.num_classes, label_smoothing=training.label_smoothing,
                                     seed=training.seed) if aug.batch_level else None
        return Trainer(model, train, test, training, batch_size=self.hp.dataset.batch_size, out_dir=out_dir,
                       device=self.device, callbacks=callbacks, progress=self.progress, batch_augment=batch_augment,
                       save_steps=save_steps)

    def _create(self, name: str, kwargs: dict, img_size=None):
        info = self.data[2]
        return create_model(name, num_classes=info.num_classes, in_chans=info.in_chans,
                            img_size=img_size or info.img_size, **kwargs)

    def _selector_vit(self):
        sel = self.hp.selector
        return self._create(sel.model or self.hp.model.name, sel.model_kwargs or self.hp.model.kwargs)

    def _student_net(self, mode: str, num_kept: int, patch: tuple[int, int]):
        """A fresh student for ``mode``: a ticketized ViT (tokens), or any model on the full image (zero) or
        on the compact re-tiled image (compact)."""
        hp = self.hp
        if mode == "compact":
            s = students.compact_side(num_kept)
            return self._create(hp.model.name, hp.model.kwargs, (s * patch[0], s * patch[1]))
        net = self._create(hp.model.name, hp.model.kwargs)
        return ticketize_vit(net) if mode == "tokens" else net

    def _check_sizes(self) -> tuple[int, ...]:
        """Fail before any training when selector and student do not fit together; returns the drop blocks."""
        vit = self._selector_vit()
        if not (hasattr(vit, "blocks") and hasattr(vit, "patch_embed") and hasattr(vit, "cls_token")):
            raise ValueError(f"--selector.model: the selector must be a timm VisionTransformer with a CLS token, "
                             f"got {vit.model_name!r} ({type(vit).__name__})")
        drop = parse_drop_blocks(self.hp.selector.drop_blocks, len(vit.blocks))
        grid, patch = tuple(vit.patch_embed.grid_size), tuple(vit.patch_embed.patch_size)
        if self.hp.student_input == "tokens":
            student = self._create(self.hp.model.name, self.hp.model.kwargs)
            if not hasattr(student, "patch_embed") or not hasattr(student, "pos_embed"):
                raise ValueError(f"--model.name: --student_input tokens needs a ViT student, got "
                                 f"{self.hp.model.name!r}; use --student_input zero or compact")
            sgrid = tuple(student.patch_embed.grid_size)
            if sgrid != grid:
                raise ValueError(f"--model.kwargs: the student's patch grid {sgrid[0]}x{sgrid[1]} "
                                 f"({sgrid[0] * sgrid[1]} patches) differs from the selector's {grid[0]}x{grid[1]} "
                                 f"({grid[0] * grid[1]}); use the same img_size and patch_size, or --student_input "
                                 f"zero|compact")
        elif self.hp.student_input == "compact" and patch[0] != patch[1]:
            raise ValueError(f"--student_input: compact needs square selector patches, got {patch}")
        return drop

    def _check_checkpoint(self) -> None:
        sel = self.hp.selector
        if sel.source != "checkpoint":
            return
        if not sel.checkpoint:
            raise ValueError("--selector.checkpoint: --selector.source checkpoint needs a local weight file, got none")
        if not Path(sel.checkpoint).is_file():
            raise FileNotFoundError(f"--selector.checkpoint: no file at {sel.checkpoint}")

    # ------------------------------------------------------------------------------------------ stages
    def _base_vit(self):
        """The trained ViT the selector starts from: a local checkpoint, or trained here (``dense/``)."""
        sel = self.hp.selector
        if sel.source == "checkpoint":
            self._check_checkpoint()
            return self._create(sel.model or self.hp.model.name, {**(sel.model_kwargs or self.hp.model.kwargs),
                                                                   "checkpoint_path": sel.checkpoint})
        seed_everything(self.hp.dense_training.seed)
        vit = self._selector_vit()
        res = self._trainer(vit, self.hp.dense_training, self.path / "dense").train()
        log.info("dense ViT: test_acc %.4f%s", res.metrics.get("test_acc", float("nan")),
                 " (done before)" if res.skipped else "")
        return vit

    def _selector(self, r: float, base, drop: tuple[int, ...]) -> PatchSelector:
        sel = self.hp.selector
        selector = PatchSelector(copy.deepcopy(base), r, drop)
        clock = [KeepRateClock(selector, sel.shrink_start_epoch, sel.shrink_epochs)] \
            if sel.keep_rate_schedule == "cosine" else []
        seed_everything(sel.training.seed)
        trainer = self._trainer(selector, sel.training, self.path / keep_dir_name(r) / "selector", callbacks=clock,
                                save_steps=self._selector_checkpoints())
        if clock and (sel.shrink_start_epoch + sel.shrink_epochs) * trainer.steps_per_epoch > trainer.total_steps:
            log.warning("keep %g: the keep-rate ramp (%d + %d epochs) ends after the %d-step fine-tune: the selector "
                        "is fine-tuned at keep rates above %g only", r, sel.shrink_start_epoch, sel.shrink_epochs,
                        trainer.total_steps, r)
        res = trainer.train()
        log.info("keep %g: selector (K = %d of %d, stages %s) test_acc %.4f", r, selector.num_kept,
                 selector.num_patches, selector.counts, res.metrics.get("test_acc", float("nan")))
        return selector.cpu().eval()

    def _selector_checkpoints(self) -> list[int]:
        """The fine-tune steps saved for the stability across checkpoints: a third and two thirds of the way."""
        spe = len(self.data[0]) // self.hp.dataset.batch_size
        total = parse_steps(self.hp.selector.training.training_steps, spe, "--selector.training.training_steps")
        return sorted({total.iteration // 3, 2 * total.iteration // 3} - {0, total.iteration})

    def _stability(self, r: float, base, drop: tuple[int, ...], selector: PatchSelector) -> None:
        """``keep_<r>/stability.json``: per-image ticket overlap across augmentations and selector checkpoints."""
        out = self.path / keep_dir_name(r) / STABILITY
        n = self.hp.stability_images
        if n == 0 or out.exists():
            return
        images = _first_images(self.data[1], n)
        sel_dir = self.path / keep_dir_name(r) / "selector"
        selects = {0: PatchSelector(copy.deepcopy(base), r, drop).cpu().select}
        for step in self._selector_checkpoints():
            if step_paths(sel_dir, step)[0].exists():  # (a selector fine-tuned by an older version saved none)
                ckpt = PatchSelector(copy.deepcopy(base), r, drop)
                load_step(sel_dir, step, ckpt)
                selects[step] = ckpt.cpu().select
        selects[json.loads((sel_dir / "done.json").read_text())["step"]] = selector.select
        aug = augmentation_stability(selector.select, images, selector.grid, seed=self.hp.selector.training.seed)
        atomic_write_json(out, stability_record(aug, checkpoint_stability(selects, images), selector.num_kept,
                                                selector.num_patches))

    def _scaled_steps(self, r_stages: float) -> str:
        hp = self.hp
        spe = len(self.data[0]) // hp.dataset.batch_size
        total = parse_steps(hp.training.training_steps, spe, "--training.training_steps").iteration
        return f"{math.ceil(round(total / r_stages, 9))}it"

    def _student(self, r: float, name: str, rep: int, selector: PatchSelector) -> None:
        hp = self.hp
        out = self.path / keep_dir_name(r) / name / f"replicate_{rep}"
        if (out / EVAL).exists():
            return
        train_dir = self.path / "all" / f"replicate_{rep}" if name == "all" else out
        seed = hp.training.seed + rep
        training = hp.training.replace(seed=seed, data_order_seed=hp.training.data_order_seed + rep)
        if name == "random_scaled":
            training = training.replace(training_steps=self._scaled_steps(r ** len(selector.counts)))
        mode = hp.student_input
        if name == "all" and mode == "compact":
            mode = "zero"  # the all-patches student sees the full image
        n, k = selector.num_patches, selector.num_kept
        src_seed = seed * 1_000_003 + zlib.crc32(name.encode())
        source = {"ticket": lambda: students.SelectorPatches(selector),
                  "random": lambda: students.RandomPatches(n, k, src_seed),
                  "random_scaled": lambda: students.RandomPatches(n, k, src_seed),
                  "random_fixed": lambda: students.FixedRandomPatches(n, k, src_seed),
                  "all": students.AllPatches}[name]()
        # During training the reference evaluates with all patches; a compact student cannot take them.
        during = students.SelectorPatches(selector) if mode == "compact" else students.AllPatches()
        seed_everything(seed)
        model = students.TicketStudent(self._student_net(mode, k, selector.patch_size), source, during, input_mode=mode,
                              patch=selector.patch_size)
        trainer = self._trainer(model, training, train_dir, callbacks=[students.StepClock(source)])
        res = trainer.train()
        evals = {}
        for ename, src in (("all", students.AllPatches()), ("ticket", students.SelectorPatches(selector)),
                           ("random", students.RandomPatches(n, k, EVAL_SEED))):
            if mode == "compact" and ename == "all":
                evals[ename] = None
                continue
            model.eval_source = src
            evals[ename] = trainer.evaluate()["test_acc"]
        recs = read_metrics(train_dir / "metrics.jsonl")
        rates = [x["samples_per_s"] for x in recs if x.get("samples_per_s")]
        record = {"keep_rate": r, "student": name, "replicate": rep, "num_kept": k, "num_patches": n,
                  "input_mode": mode, "steps": res.step, "test_acc": evals,
                  "train_samples_per_s": sum(rates) / len(rates) if rates else None,
                  "train_time_s": res.metrics.get("elapsed_s")}
        if is_main_process():
            atomic_write_json(out / EVAL, record)
        log.info("keep %g | %-13s | rep %d | acc all %s ticket %.4f random %.4f", r, name, rep,
                 "-" if evals["all"] is None else f"{evals['all']:.4f}", evals["ticket"], evals["random"])

    def _speed(self, selectors: dict[float, PatchSelector]) -> None:
        """Inference images/s of the dense ViT on all patches vs the student on each ticket (and the selector)."""
        path = self.path / SPEED
        if path.exists() or not is_main_process():
            return
        device = torch.device(self.device) if self.device else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        images = _first_images(self.data[1], self.hp.speed_batch).to(device)
        b = images.shape[0]
        torch.manual_seed(0)
        mode = self.hp.student_input
        # the dense baseline is the plain model (timm's conv patch embedding), not the ticketized one
        dense = self._create(self.hp.model.name, self.hp.model.kwargs).to(device).eval()
        fns = {"dense": functools.partial(dense, images)}
        for r, selector in selectors.items():
            selector.to(device)
            index = selector.select(images)
            net = self._student_net(mode, selector.num_kept, selector.patch_size).to(device).eval()
            student = students.TicketStudent(net, None, _Fixed(index), input_mode=mode,
                                             patch=selector.patch_size).eval()
            fns[f"student_{r:g}"] = functools.partial(student, images)
            fns[f"selector_{r:g}"] = functools.partial(selector.select, images)
        ips = throughputs(fns, b)
        out = {"device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
               "threads": torch.get_num_threads(), "batch": b, "torch": torch.__version__,
               "dense_images_per_s": ips["dense"],
               "keep": {f"{r:g}": {"num_kept": s.num_kept, "student_images_per_s": ips[f"student_{r:g}"],
                                   "selector_images_per_s": ips[f"selector_{r:g}"]} for r, s in selectors.items()}}
        for selector in selectors.values():
            selector.cpu()
        atomic_write_json(path, out)

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        hp = self.hp
        if self.data is None:  # every input is checked before the run directory exists
            extra = {"randaugment": hp.augment.randaugment} if hp.augment.randaugment else {}
            self.data = open_dataset(hp.dataset, **extra)
        with as_flags("model", MODEL_FIELDS), as_flags("selector", {"drop_blocks": "drop_blocks"}):
            drop = self._check_sizes()
        self._check_checkpoint()
        self.path = prepare_run_dir(WORKFLOW, hp, self.root, write=is_main_process())
        base = self._base_vit()
        selectors = {r: self._selector(r, base, drop) for r in hp.keep_rates}
        for rep in range(hp.replicates):
            for r, selector in selectors.items():
                for name in hp.students:
                    self._student(r, name, rep, selector)
        self._speed(selectors)
        if is_main_process():
            for r, selector in selectors.items():
                self._stability(r, base, drop, selector)
            info = self.data[2]
            if self.export:
                for r, selector in selectors.items():
                    export_tickets(selector, self.data[1], self.path / keep_dir_name(r) / "tickets.safetensors",
                                   batch_size=hp.speed_batch, dataset=info.name)
            images = _first_images(self.data[1], 8)
            plot_tickets(images, {r: s.select(images) for r, s in selectors.items()}, first_patch(selectors),
                         info.mean, info.std, self.path / "plots" / "tickets.png")
            summary = write_summary(self.path)
            plot_accuracy_vs_keep(summary, self.path / "plots" / "accuracy_vs_keep.png")
            plot_stability(summary, self.path / "plots" / "ticket_stability.png")
        return self.path


def first_patch(selectors: dict) -> tuple[int, int]:
    return next(iter(selectors.values())).patch_size


class _Fixed:
    """An index source returning one precomputed index (the speed measurement excludes selection)."""

    def __init__(self, index: torch.Tensor):
        self.index = index

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.index
