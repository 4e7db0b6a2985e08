"""The IMP runner: pretrain to the rewind step, then level 0, prune, rewind, retrain, branches; see the package ``imp``.

Every stage is a ``Trainer`` run in its own directory, so a finished stage is skipped (``done.json``) and a
killed one resumes bit-exactly from its ``checkpoint.pt``. A mask is decided once, on rank 0, from the
previous level's saved final weights and written to ``mask.safetensors`` before its level trains; the
other ranks start from all-ones masks that the Trainer's ``broadcast_masks`` overwrites with rank 0's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lth_kernels.models import load_weights
from lth_kernels.tickets import Ticket, prunable_parameters, prune
from lth_kernels.tickets.prunable import iter_maskable
from lth_kernels.training import Trainer, TrainingHparams, TrainResult
from lth_kernels.training.checkpoint import load_step
from lth_kernels.training.distributed import barrier, is_main_process
from lth_kernels.training.rundir import atomic_write_json, prepare_run_dir
from lth_kernels.training.steps import parse_steps
from lth_kernels.training.trainer import DONE
from lth_kernels.workflows.common.data import build_data
from lth_kernels.workflows.common.inputs import make_model
from lth_kernels.workflows.imp.branches import BRANCHES, branch_dir_name
from lth_kernels.workflows.imp.hparams import WORKFLOW, ImpHparams, parse_levels


def run_imp(hp: ImpHparams, root: str = "runs", **kwargs):
    """Run (or resume) IMP for ``hp`` under ``root``; returns the run directory (a ``Path``).

    ``kwargs`` go to ``ImpRunner``: ``callbacks`` (Trainer callbacks, every stage), ``device``,
    ``progress``, ``data`` (``(train, test, info[, val])`` to use instead of building ``hp.dataset``), ``threads``
    (``"auto"``: one CPU thread for small models).
    """
    from lth_kernels.workflows.imp.runner import ImpRunner

    return ImpRunner(hp, root=root, **kwargs).run()


log = logging.getLogger(__name__)


def _with_val(data: tuple) -> tuple:
    """``(train, test, info)`` -> ``(train, test, info, None)``; a 4-tuple as it is."""
    if len(data) not in (3, 4):
        raise ValueError(f"data: expected (train, test, info[, val]), got a tuple of {len(data)}")
    return tuple(data) + (None,) * (4 - len(data))


MASK = "mask.safetensors"


REPORT = "sparsity_report.json"


class ImpRunner:
    """Runs (or resumes) the IMP experiment described by ``hp`` in ``<root>/imp-<hash>/``.

    Args:
        hp: the experiment.
        root: directory of run directories.
        callbacks: ``Trainer`` callbacks added to every stage.
        device: training device (default: CUDA when available).
        progress: tqdm bars on a terminal.
        data: ``(train, test, info[, val])`` to use instead of ``build_data(hp.dataset)``; ``val`` (a
            validation set) selects the reported best step.
        threads: torch intra-op threads; ``"auto"``: 1 when training a model of under ``SMALL_MODEL``
            parameters on the CPU, else torch's default; None: leave torch's setting alone.
        workflow: the run directory's prefix (``lth train`` runs level 0 only, as ``train-<hash>``).
    """

    # Below this many parameters the GEMMs are too small to gain from intra-op threads on a CPU, and they lose
    # badly when the cores are shared: lenet_300_100 on digits measured 2.4 ms/step with 1 thread and 44 ms
    # with 2 on a busy 2-core machine.
    SMALL_MODEL = 1_000_000

    def __init__(self, hp: ImpHparams, root: str | Path = "runs", *, callbacks=(), device=None,
                 progress: bool = True, data=None, threads: int | str | None = None, workflow: str = WORKFLOW,
                 flag_prefix: str = ""):
        self.hp, self.root, self.flag_prefix = hp, Path(root), flag_prefix
        self.callbacks, self.device, self.progress = list(callbacks), device, progress
        self.is_main = is_main_process()
        self._data = {}
        self.data = _with_val(data) if data is not None else self.data_for(hp.dataset)
        self.steps_per_epoch = len(self.data[0]) // hp.dataset.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"--dataset.batch_size: {hp.dataset.batch_size} is larger than the training set "
                             f"({len(self.data[0])} samples)")
        spe = self.steps_per_epoch
        self.end_step = parse_steps(hp.training.training_steps, spe, "--training.training_steps").iteration
        self.rewind_step = parse_steps(hp.rewind, spe, "--rewind").iteration
        if self.rewind_step >= self.end_step:
            raise ValueError(f"--rewind: {hp.rewind} ({self.rewind_step} steps) is not before the end of training "
                             f"(--training.training_steps {hp.training.training_steps} = {self.end_step} steps of "
                             f"{spe} per epoch)")
        shapes = make_model(hp.model, self.data[2], f"{flag_prefix}model", meta=True)  # before the run dir exists
        for flag, path in (("init.weights", hp.init.weights), ("init.ticket", hp.init.ticket)):
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"--{flag_prefix}{flag}: no file at {path}")
        self._set_threads(threads, sum(p.numel() for p in shapes.parameters()))
        self.num_levels = hp.num_levels
        if ":" in hp.pruning.structure and hp.levels > 1 and hp.target_density is None:
            log.warning("--pruning.structure %s has a fixed density: running 1 pruned level, not %d",
                        hp.pruning.structure, hp.levels)
        self.path = prepare_run_dir(workflow, hp, self.root, write=self.is_main)
        if self.is_main and json.loads((self.path / "hparams.json").read_text()) != hp.to_dict():
            atomic_write_json(self.path / "hparams.json", hp.to_dict())  # same run, this invocation's job fields
        barrier()

    def _set_threads(self, threads: int | str | None, parameters: int) -> None:
        if threads == "auto":
            on_cpu = torch.device(self.device).type == "cpu" if self.device is not None \
                else not torch.cuda.is_available()
            threads = 1 if on_cpu and parameters < self.SMALL_MODEL else None
        if threads is not None:
            torch.set_num_threads(int(threads))

    # ------------------------------------------------------------------------------------------ building blocks
    def data_for(self, dataset) -> tuple:
        """``(train, test, info, val)`` of a ``DatasetHparams`` (built once per distinct value)."""
        key = dataset.to_json()
        if key not in self._data:
            self._data[key] = build_data(dataset, f"{self.flag_prefix}dataset")
        return self._data[key]

    def training_for(self, replicate: int) -> TrainingHparams:
        """Replicate ``r`` shifts the init and data-order seeds by ``r``."""
        t = self.hp.training
        return t.replace(seed=t.seed + replicate, data_order_seed=t.data_order_seed + replicate)

    def new_model(self, seed: int, info=None) -> nn.Module:
        """A freshly initialised model, seeded by ``seed``."""
        return make_model(self.hp.model, info or self.data[2], f"{self.flag_prefix}model", seed=seed)

    def replicate_model(self, replicate: int) -> nn.Module:
        """The replicate's θ₀ as initialised (``pretrain`` may replace it with ``--init.weights``)."""
        return self.new_model(self.training_for(replicate).seed)

    def exclude_globs(self, model: nn.Module) -> tuple[str, ...]:
        """The maskable weights the main run never prunes (by name): see ``prunable``."""
        prunable = self.prunable(model)
        return tuple(name for name, _, _ in iter_maskable(model) if name not in prunable)

    def prunable(self, model: nn.Module) -> dict:
        """The weights the main run prunes: the model's and ``--pruning.exclude``'s exclusions, except the layers
        a ``--pruning.fraction_by`` glob names."""
        return prunable_parameters(model, self.hp.pruning.exclude, include=tuple(self.hp.pruning.fraction_by))

    def replicate_dir(self, replicate: int) -> Path:
        return self.path / f"replicate_{replicate}"

    def level_dir(self, replicate: int, level: int, branch: str = "main") -> Path:
        return self.replicate_dir(replicate) / f"level_{level}" / branch

    def load_rewind(self, model: nn.Module, replicate: int) -> nn.Module:
        """θ_K of the replicate into ``model``."""
        load_step(self.replicate_dir(replicate) / "pretrain", self.rewind_step, model)
        return model

    def rewound_model(self, replicate: int) -> nn.Module:
        return self.load_rewind(self.replicate_model(replicate), replicate)

    def initial_model(self, replicate: int) -> nn.Module:
        """θ₀ of the replicate (saved by ``pretrain`` as ``step_0``)."""
        model = self.replicate_model(replicate)
        load_step(self.replicate_dir(replicate) / "pretrain", 0, model)
        return model

    @staticmethod
    def load_final(model: nn.Module, stage_dir: Path) -> nn.Module:
        """The final weights of a finished stage into ``model``."""
        done = stage_dir / DONE
        if not done.exists():
            raise FileNotFoundError(f"{stage_dir} has not finished training (no {DONE})")
        load_step(stage_dir, json.loads(done.read_text())["step"], model)
        return model

    def main_ticket(self, replicate: int, level: int) -> Ticket:
        return Ticket.load(self.level_dir(replicate, level) / MASK)

    # ------------------------------------------------------------------------------------------ stages
    def train_stage(self, model: nn.Module, ticket: Ticket | Callable[[], Ticket], out_dir: Path,
                    training: TrainingHparams, start_step: int, *, data=None, batch_size: int | None = None
                    ) -> TrainResult:
        """Mask ``model`` (which holds the start weights) with ``ticket`` and train it from ``start_step``.

        On rank 0 the ticket (a factory is called only when ``out_dir`` has no mask yet) is saved with its
        sparsity report first; the other ranks use all-ones masks until the Trainer broadcasts rank 0's.
        """
        out_dir = Path(out_dir)
        if self.is_main:
            mask_file = out_dir / MASK
            if mask_file.exists():
                ticket = Ticket.load(mask_file)
            else:
                ticket = ticket() if callable(ticket) else ticket
                self._save_ticket(ticket, out_dir, model)
        else:
            ticket = Ticket.ones(model)
        ticket.apply(model)
        train, test, _, val = _with_val(data or self.data)
        trainer = Trainer(model, train, test, training, batch_size=batch_size or self.hp.dataset.batch_size,
                          out_dir=out_dir, device=self.device, callbacks=self.callbacks, progress=self.progress,
                          val_ds=val)
        return trainer.train(start_step=start_step)

    def evaluator(self, model: nn.Module, training: TrainingHparams) -> Trainer:
        """A Trainer that only evaluates ``model`` (``.evaluate()``), keeping nothing on disk."""
        return Trainer(model, *self.data[:2], training, batch_size=self.hp.dataset.batch_size, device=self.device,
                       progress=False)

    def _save_ticket(self, ticket: Ticket, out_dir: Path, model: nn.Module) -> None:
        prunable = self.prunable(model)
        ticket = ticket.with_metadata(excluded=",".join(n for n in ticket if n not in prunable))
        ticket.save_report(out_dir / REPORT)  # == Ticket.load(mask).report()
        ticket.save(out_dir / MASK)  # last: an existing mask file means the report is there too

    def pretrain(self, replicate: int) -> None:
        """θ₀ -> θ_K, dense (K = 0: just θ₀); saves ``step_0`` and ``step_<K>``."""
        training = self.training_for(replicate)
        model = self.replicate_model(replicate)
        if self.hp.init.weights:
            load_weights(model, self.hp.init.weights)
        trainer = Trainer(model, *self.data[:2], training, batch_size=self.hp.dataset.batch_size,
                          out_dir=self.replicate_dir(replicate) / "pretrain", device=self.device,
                          save_steps=[0], callbacks=self.callbacks, progress=self.progress, val_ds=self.data[3])
        trainer.train(end_step=self.rewind_step)

    def level_ticket(self, replicate: int, level: int) -> Ticket:
        """Level 0: dense. Level L: prune level L-1's final weights further (rank 0 only)."""
        meta = {"source_run": self.path.name, "replicate": replicate, "rewind": self.hp.rewind}
        model = self.replicate_model(replicate)
        if level == 0:
            if not self.hp.init.ticket:
                return Ticket.ones(model, metadata=meta)
            given = Ticket.load(self.hp.init.ticket)
            given.match(model)  # names and shapes, one-line errors
            return given.with_metadata(**meta, level="0", init_ticket=str(self.hp.init.ticket))
        prev = self.level_dir(replicate, level - 1)
        self.load_final(model, prev)
        p = self.hp.pruning
        # (an N:M structure has its own density: prune ignores the fraction there; the new ticket's level is the
        # current one's + 1, which prune writes itself)
        return prune(model, "magnitude", p.fraction, current=Ticket.load(prev / MASK), scope=p.scope,
                     structure=p.structure, exclude=p.exclude, fraction_by=p.fraction_by, metadata=meta)

    def level(self, replicate: int, level: int) -> TrainResult:
        model = self.rewound_model(replicate)
        res = self.train_stage(model, lambda: self.level_ticket(replicate, level), self.level_dir(replicate, level),
                               self.training_for(replicate), self.rewind_step)
        self._log_stage(replicate, level, "main", res)
        return res

    def branches(self, replicate: int, level: int) -> None:
        chosen = parse_levels(self.hp.branch_levels)
        if chosen is not None and level not in chosen:
            return
        for name in self.hp.branches:
            branch = BRANCHES[name]
            opts = getattr(self.hp, branch.options) if branch.options else None
            dir_name = branch_dir_name(self.hp, name)
            res = branch.fn(self, replicate, level, opts, self.level_dir(replicate, level, dir_name))
            self._log_stage(replicate, level, dir_name, res)

    def _log_stage(self, replicate: int, level: int, name: str, res: TrainResult) -> None:
        if not self.is_main:
            return
        report = json.loads((self.level_dir(replicate, level, name) / REPORT).read_text())
        log.info("replicate %d | level %d | %-14s | density %6.2f%% | test_acc %.4f%s", replicate, level, name,
                 100 * report["prunable"]["density"], res.metrics.get("test_acc", float("nan")),
                 " (done before)" if res.skipped else "")

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        from lth_kernels.workflows.imp.report import write_summary

        if self.is_main:
            log.info("imp run %s: %d levels, %d replicate(s), branches: %s, rewind to step %d of %d",
                     self.path, self.num_levels, self.hp.replicates, ",".join(self.hp.branches) or "none",
                     self.rewind_step, self.end_step)
        for r in range(self.hp.replicates):
            self.pretrain(r)
            for level in range(self.num_levels + 1):
                self.level(r, level)
                if level > 0:
                    self.branches(r, level)
                if self.is_main:
                    write_summary(self.path)
        barrier()
        return self.path
