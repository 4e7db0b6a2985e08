"""The elastic runner: IMP runs per depth, the transformed tickets, the baselines, linear mode connectivity.

Every training is ``ImpRunner.train_stage`` of the *target's* IMP runner (the target's schedule, data
order and exclusions), in a directory of the elastic run, so it is skipped when done and resumes when
killed. Masks are decided on rank 0 (ticket factories), as in the IMP runner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from lth_kernels.models import create_model
from lth_kernels.tickets import Ticket, elastic, prunable_parameters, prune, shuffle
from lth_kernels.training import TrainResult
from lth_kernels.training.connectivity import COPY_SEEDS, interpolate
from lth_kernels.training.distributed import barrier, is_main_process
from lth_kernels.training.rundir import atomic_write_json, prepare_run_dir
from lth_kernels.workflows.common.data import build_data
from lth_kernels.workflows.common.inputs import MODEL_FIELDS, as_flags
from lth_kernels.workflows.elastic.hparams import WORKFLOW, ElasticHparams
from lth_kernels.workflows.imp.branches import derived_seed
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import ImpRunner


def run_elastic(hp: ElasticHparams, root: str = "runs", **kwargs):
    """Run (or resume) the elastic experiment ``hp`` under ``root``; returns the run directory (a ``Path``).

    ``kwargs`` go to ``ElasticRunner``: ``imp_root``, ``imp_runs`` (``{depth: run dir}``), ``device``,
    ``progress``, ``data``, ``callbacks``.
    """
    from lth_kernels.workflows.elastic.runner import ElasticRunner

    return ElasticRunner(hp, root=root, **kwargs).run()


log = logging.getLogger(__name__)


# Data-order seed offsets of the two LMC copies (the reference's change_depth_linear_connect).
LMC_SEEDS = COPY_SEEDS


PRUNED_BASELINES = ("random", "magnitude", "snip", "grasp", "synflow")


class ElasticRunner:
    """Runs (or resumes) the elastic experiment ``hp`` in ``<root>/elastic-<hash>/``.

    Args:
        hp: the experiment.
        root: directory of run directories.
        imp_root: where the IMP runs of every depth are made or found (default ``root``).
        imp_runs: ``{depth: run directory}`` of existing IMP runs to use instead (same data set).
        device, progress, callbacks: passed to every training.
        data: ``(train, test, info)`` instead of building ``hp.imp.dataset``.
    """

    def __init__(self, hp: ElasticHparams, root: str | Path = "runs", *, imp_root: str | Path | None = None,
                 imp_runs: dict[int, str | Path] | None = None, device=None, progress: bool = True, callbacks=(),
                 data=None):
        self.hp, self.root = hp, Path(root)
        self.imp_root = Path(imp_root) if imp_root is not None else self.root
        self.imp_runs = {int(d): Path(p) for d, p in (imp_runs or {}).items()}
        self.device, self.progress, self.callbacks = device, progress, list(callbacks)
        # every input is checked before the run directory exists
        self.data = data if data is not None else build_data(hp.imp.dataset, "imp.dataset")
        self.level = hp.imp.num_levels
        with as_flags("imp.model", MODEL_FIELDS):
            self.family_depth = elastic.model_depth(hp.imp.model.name, hp.imp.model.kwargs)
        self.check_pairs()
        for depth in self.imp_runs:
            self.imp_hparams(depth)
        self.is_main = is_main_process()
        self.path = prepare_run_dir(WORKFLOW, hp, self.root, write=self.is_main)
        self.levels = hp.level_list
        self._runners: dict[int, ImpRunner] = {}
        self._matched: dict[tuple[int, int, int], float] = {}
        barrier()

    def check_pairs(self) -> None:
        """Every pair's mapping (generated or given) is valid for the two models, before anything trains."""
        info, m = self.data[2], self.hp.imp.model
        layouts = {}
        for pair in self.hp.pair_list:
            for d in pair:
                if d not in layouts:
                    name, kwargs = elastic.model_for_depth(m.name, m.kwargs, d)
                    with torch.device("meta"):  # keys and shapes only: no memory, no initialisation cost
                        model = create_model(name, num_classes=info.num_classes, in_chans=info.in_chans,
                                             img_size=info.img_size, **kwargs)
                    layouts[d] = elastic.layout_of(model.state_dict())
            (s, t), text = pair, self.hp.block_mapping.get(f"{pair[0]}:{pair[1]}")
            src, dst = layouts[s].lengths, layouts[t].lengths
            try:
                if len(src) != len(dst):
                    raise elastic.ElasticError(f"target: the number of stages must stay fixed, {src} vs {dst} units")
                given = elastic.parse_mapping(text, len(src)) if text is not None else None
                elastic.check_mapping(given or elastic.generate_mapping(src, dst, self.hp.strategy), src, dst)
            except elastic.ElasticError as e:
                raise elastic.ElasticError(f"--pairs {s}:{t}: {e}") from None

    # ------------------------------------------------------------------------------------------ IMP runs
    def imp_hparams(self, depth: int) -> ImpHparams:
        """The IMP recipe at ``depth``: ``--imp.*`` with the family's model of that depth, no branches."""
        if depth in self.imp_runs:
            hp_file = self.imp_runs[depth] / "hparams.json"
            if not hp_file.exists():
                raise FileNotFoundError(f"--imp_runs: {self.imp_runs[depth]} is not an IMP run (no hparams.json)")
            hp = ImpHparams.from_json(hp_file.read_text())
            if elastic.model_depth(hp.model.name, hp.model.kwargs) != depth:
                raise ValueError(f"--imp_runs: {self.imp_runs[depth]} trains {hp.model.name}, not depth {depth}")
            if hp.dataset.name != self.hp.imp.dataset.name:
                raise ValueError(f"--imp_runs: {self.imp_runs[depth]} trains on {hp.dataset.name}, this run on "
                                 f"{self.hp.imp.dataset.name}")
            return hp.replace(levels=max(hp.num_levels, self.level), target_density=None, branches=())
        name, kwargs = elastic.model_for_depth(self.hp.imp.model.name, self.hp.imp.model.kwargs, depth)
        model = self.hp.imp.model.replace(name=name, kwargs=kwargs)
        return self.hp.imp.replace(model=model, levels=self.level, target_density=None, branches=())

    def imp(self, depth: int) -> ImpRunner:
        if depth not in self._runners:
            root = self.imp_runs[depth].parent if depth in self.imp_runs else self.imp_root
            runner = ImpRunner(self.imp_hparams(depth), root, callbacks=self.callbacks, device=self.device,
                               progress=self.progress, data=self.data, flag_prefix="imp.")
            if depth in self.imp_runs and runner.path.resolve() != self.imp_runs[depth].resolve():
                raise ValueError(f"--imp_runs: {self.imp_runs[depth]} is named {self.imp_runs[depth].name}, its "
                                 f"hparams hash to {runner.path.name}")
            self._runners[depth] = runner
        return self._runners[depth]

    def ensure_imp(self, depth: int, replicate: int, levels: int) -> None:
        """Pretrain (θ_0, θ_K) and levels ``0..levels`` of the IMP run at ``depth`` (each skipped when done)."""
        runner = self.imp(depth)
        runner.pretrain(replicate)
        for level in range(levels + 1):
            runner.level(replicate, level)
        if self.is_main:
            from lth_kernels.workflows.imp.report import write_summary

            write_summary(runner.path)

    # ------------------------------------------------------------------------------------------ stages
    def target_dir(self, replicate: int, depth: int, level: int | None = None) -> Path:
        """The stages on target ``depth`` for the source tickets of ``level``: the last IMP level's directly in
        ``target_<T>/`` (where a run from before ``--levels`` has them), other levels in ``target_<T>/level_<l>/``."""
        base = self.path / f"replicate_{replicate}" / f"target_{depth}"
        return base if level is None or level == self.level else base / f"level_{level}"

    def transformed(self, replicate: int, src: int, dst: int, random_copies: bool = False, level: int | None = None):
        """The source's level-``level`` ticket (default the last level) and rewind weights transformed to
        depth ``dst``."""
        level = self.level if level is None else level
        s_run, t_run = self.imp(src), self.imp(dst)
        source = s_run.rewound_model(replicate)
        target = t_run.new_model(t_run.training_for(replicate).seed)
        gen = None
        if random_copies:
            seed = derived_seed("elastic_random_copies", replicate, src, dst, self.hp.seed)
            gen = torch.Generator().manual_seed(seed)
        res = elastic.transform(source.state_dict(), target.state_dict(),
                                ticket=s_run.main_ticket(replicate, level), strategy=self.hp.strategy,
                                mapping=self.hp.block_mapping.get(f"{src}:{dst}"), random_copies=gen,
                                exclude=s_run.exclude_globs(source))
        res.ticket = res.ticket.with_metadata(model=t_run.hp.model.name, source_run=s_run.path.name,
                                              level=level, replicate=replicate)
        return res, target

    def train(self, depth: int, replicate: int, model, ticket, out_dir: Path, *, start: int | None = None,
              data_order_offset: int = 0) -> TrainResult:
        runner = self.imp(depth)
        training = runner.training_for(replicate)
        if data_order_offset:
            training = training.replace(data_order_seed=training.data_order_seed + data_order_offset)
        start = runner.rewind_step if start is None else start
        return runner.train_stage(model, ticket, out_dir, training, start)

    def ett(self, replicate: int, src: int, dst: int, variant: str = "ett", out_dir: Path | None = None,
            data_order_offset: int = 0, level: int | None = None) -> TrainResult | None:
        """``ett``: the transformed ticket; ``ett_random_copies``: its copies' masks permuted; ``ett_shuffled``:
        every layer's kept weights moved to random places in the layer (the same per-layer density), from the
        same weights; ``reinit``: the transformed mask on a fresh initialisation."""
        out_dir = out_dir or self.target_dir(replicate, dst, level) / f"{variant}_from_{src}"
        res, target = self.transformed(replicate, src, dst, random_copies=variant == "ett_random_copies", level=level)
        if variant == "ett_random_copies" and not res.copies:
            return None  # a squeeze copies nothing: the ablation is the plain elastic.transform
        if self.is_main and variant == "ett":
            atomic_write_json(self.target_dir(replicate, dst, level) / f"elastic_from_{src}.json",
                              {**res.report, "copies": list(res.copies), "source_run": self.imp(src).path.name})
        if variant == "reinit":
            model = self.imp(dst).new_model(derived_seed("elastic_reinit", replicate, src, dst, self.hp.seed))
        else:
            target.load_state_dict(res.state_dict)
            model = target
        start = 0 if self.hp.start_at_step_zero else None
        ticket = res.ticket.with_metadata(branch=variant)
        if variant == "ett_shuffled":
            g = torch.Generator().manual_seed(derived_seed("elastic_shuffled", replicate, src, dst, self.hp.seed))
            ticket = shuffle(ticket, scope="layerwise", generator=g, exclude=self.imp(dst).exclude_globs(target))
        return self.train(dst, replicate, model, ticket, out_dir, start=start, data_order_offset=data_order_offset)

    def matched_density(self, replicate: int, depth: int, level: int | None = None) -> float:
        """The prunable density of the level-``level`` transformed ticket at ``depth`` (from the first source
        paired with it): what the baselines there are pruned to. Copied and dropped blocks move the density away
        from the nominal ``(1 - fraction)^level``, so a baseline at the nominal density would not be matched."""
        level = self.level if level is None else level
        key = (replicate, depth, level)
        if key not in self._matched:
            src = next((s for s, t in self.hp.pair_list if t == depth), None)
            if src is None:
                self._matched[key] = self.hp.nominal_density(level)
            else:
                res, target = self.transformed(replicate, src, depth, level=level)
                names = list(prunable_parameters(target, self.hp.imp.pruning.exclude))
                total = sum(res.ticket[n].numel() for n in names)
                self._matched[key] = sum(int(res.ticket[n].sum()) for n in names) / total if total else 1.0
        return self._matched[key]

    def pruned_baseline(self, replicate: int, depth: int, method: str, level: int | None = None) -> TrainResult:
        """``method`` at the matched density (the level-``level`` transformed ticket's, see ``matched_density``)
        on the target, trained from the target's own θ_K. Its random draws do not depend on the level."""
        runner = self.imp(depth)
        model = runner.rewound_model(replicate)
        # ``prune`` removes ceil(fraction * R) of R prunable weights: the baseline keeps the ticket's count.
        fraction = min(max(1.0 - self.matched_density(replicate, depth, level), 1e-12), 1.0 - 1e-12)
        p = self.hp.imp.pruning

        def make() -> Ticket:
            meta = {"branch": method, "replicate": replicate, "source_run": runner.path.name}
            if method == "magnitude":  # one-shot: the dense target's final weights, rewound to θ_K
                trained = runner.load_final(runner.new_model(0), runner.level_dir(replicate, 0))
                return prune(trained, "magnitude", fraction, scope=p.scope, exclude=p.exclude, metadata=meta)
            scorer = runner.rewound_model(replicate).to(self.device or "cpu")
            kwargs = {}
            if method == "random":
                kwargs["generator"] = torch.Generator().manual_seed(
                    derived_seed("elastic_random", replicate, depth, self.hp.seed))
            else:
                kwargs.update(data=self.prune_batches(), loss_fn=F.cross_entropy)
            return prune(scorer, method, fraction, scope=p.scope, exclude=p.exclude, metadata=meta, **kwargs)

        return self.train(depth, replicate, model, make, self.target_dir(replicate, depth, level) / method)

    def prune_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``--prune_batches`` batches of a fixed shuffle of the training set."""
        train = self.data[0]
        g = torch.Generator().manual_seed(derived_seed("elastic_prune_batches", self.hp.seed))
        order = torch.randperm(len(train), generator=g)
        bs, dev = self.hp.imp.dataset.batch_size, self.device or "cpu"
        out = []
        for i in range(min(self.hp.prune_batches, len(train) // bs)):
            items = [train[int(j)] for j in order[i * bs:(i + 1) * bs]]
            out.append((torch.stack([x for x, _ in items]).to(dev), torch.tensor([int(y) for _, y in items]).to(dev)))
        return out

    # ------------------------------------------------------------------------------------------ LMC
    def lmc(self, replicate: int, src: int, dst: int, level: int | None = None) -> dict:
        """Two copies of the transformed ticket with different data orders, and the test error along the line
        between their final weights: ``instability`` = max error - mean of the two ends' errors."""
        base = self.target_dir(replicate, dst, level) / f"lmc_from_{src}"
        out = base / "lmc.json"
        if out.exists():
            return json.loads(out.read_text())
        for name, offset in zip(("copy_a", "copy_b"), LMC_SEEDS):
            self.ett(replicate, src, dst, out_dir=base / name, data_order_offset=offset, level=level)
        if not self.is_main:
            return {}
        runner = self.imp(dst)
        states = []
        for name in ("copy_a", "copy_b"):
            m = runner.new_model(0)
            Ticket.load(base / name / "mask.safetensors").apply(m)
            runner.load_final(m, base / name)
            states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        model = m
        evaluator = runner.evaluator(model, runner.training_for(replicate))
        result = interpolate(model, *states, lambda: 1.0 - evaluator.evaluate()["test_acc"], self.hp.lmc_points)
        atomic_write_json(out, result)
        return result

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        from lth_kernels.workflows.elastic.report import write_report

        hp = self.hp
        pairs = hp.pair_list
        sources = sorted({s for s, _ in pairs})
        targets = sorted({t for _, t in pairs})
        if self.is_main:
            log.info("elastic run %s: pairs %s, levels %s of %d (nominal density %s), baselines %s", self.path,
                     ",".join(hp.pairs), ",".join(map(str, self.levels)), self.level,
                     ", ".join(f"{100 * hp.nominal_density(lv):.2f}%" for lv in self.levels),
                     ",".join(hp.baselines) or "none")
        for r in range(hp.imp.replicates):
            for s in sources:
                self.ensure_imp(s, r, self.level)
            for t in targets:
                # the target's θ_K always; level 0 (dense) for one-shot magnitude; all levels for IMP on it
                levels = self.level if "imp" in hp.baselines else 0 if "magnitude" in hp.baselines else -1
                if t in sources:
                    levels = self.level
                self.ensure_imp(t, r, levels)
            for level in self.levels:  # each level's stages are skipped when done: a killed run resumes per level
                self.run_level(r, level)
            if self.is_main:
                write_report(self)
        barrier()
        return self.path

    def run_level(self, r: int, level: int) -> None:
        """Replicate ``r``'s transformed tickets of source level ``level``, their controls, LMC and baselines."""
        hp = self.hp
        for s, t in hp.pair_list:
            self._log(r, t, f"ett_from_{s}", self.ett(r, s, t, level=level), level)
            for variant in ("random_copies", "shuffled", "reinit"):
                if variant in hp.baselines:
                    stage = variant if variant == "reinit" else f"ett_{variant}"
                    self._log(r, t, f"{stage}_from_{s}", self.ett(r, s, t, stage, level=level), level)
            if hp.lmc:
                res = self.lmc(r, s, t, level)
                if self.is_main:
                    log.info("replicate %d | level %d | %d -> %d | LMC instability %.2f%%", r, level, s, t,
                             100 * res["instability"])
        for t in sorted({t for _, t in hp.pair_list}):
            if self.is_main and any(m in hp.baselines for m in PRUNED_BASELINES):
                log.info("replicate %d | level %d | target %d | baselines pruned to the transformed ticket's "
                         "density %.2f%% (nominal %.2f%%)", r, level, t, 100 * self.matched_density(r, t, level),
                         100 * hp.nominal_density(level))
            for method in PRUNED_BASELINES:
                if method in hp.baselines:
                    self._log(r, t, method, self.pruned_baseline(r, t, method, level), level)

    def _log(self, replicate: int, depth: int, name: str, res: TrainResult | None, level: int) -> None:
        if not self.is_main or res is None:
            return
        rep = json.loads((self.target_dir(replicate, depth, level) / name / "sparsity_report.json").read_text())
        log.info("replicate %d | level %d | target %d | %-28s | density %6.2f%% | test_acc %.4f%s", replicate, level,
                 depth, name,
                 100 * rep["prunable"]["density"], res.metrics.get("test_acc", float("nan")),
                 " (done before)" if res.skipped else "")

__all__ = ["LMC_SEEDS", "ElasticRunner"]
