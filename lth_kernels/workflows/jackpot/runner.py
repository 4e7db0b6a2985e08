"""The runner of ``lth jackpot``: weights, the criterion ticket, the mask search (``search``), fine-tuning."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from lth_kernels.workflows.jackpot.hparams import WORKFLOW, JackpotHparams


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or the final weights of a run directory of this project (``done.json`` names the
    step; ``lth imp`` runs are searched in ``replicate_0/level_0``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"--source.weights: no file or run directory at {p}")
    for d in [p, *sorted(p.glob("replicate_0/level_0")), *sorted(p.glob("replicate_0/level_0/*"))]:
        done = d / "done.json"
        if done.is_file():
            step = json.loads(done.read_text())["step"]
            f = d / f"step_{step}.safetensors"
            if f.is_file():
                return f
    raise FileNotFoundError(f"--source.weights: {p} holds no finished run (done.json + step_<K>.safetensors, also "
                            "looked in replicate_0/level_0)")


class _Job:
    """One run's shared state: data, model factory, run directory, device."""

    def __init__(self, hp: JackpotHparams, root, device, progress: bool):
        import torch

        from lth_kernels.training import prepare_run_dir
        from lth_kernels.workflows.common.inputs import make_model, open_dataset

        self.hp, self.progress = hp, progress
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # every input is checked before the run directory exists
        self.train_ds, self.test_ds, self.info = open_dataset(hp.dataset)
        make_model(hp.model, self.info, meta=True)
        if hp.source.weights:
            resolve_weights(hp.source.weights)
        self.dir = prepare_run_dir(WORKFLOW, hp, root)
        self.batch = hp.search.batch_size or hp.dataset.batch_size

    def new_model(self):
        from lth_kernels.workflows.common.inputs import make_model

        return make_model(self.hp.model, self.info, seed=self.hp.search.seed)

    def trainer(self, model, training, out_dir=None, **kw):
        from lth_kernels.training import Trainer

        return Trainer(model, self.train_ds, self.test_ds, training, batch_size=kw.pop("batch_size", self.batch),
                       out_dir=out_dir, device=self.device, progress=self.progress, **kw)


def _weights(job: _Job):
    """The frozen weights: (model in eval-ready state, source description, dense test accuracy)."""
    from lth_kernels.models import load_weights

    src, model = job.hp.source, job.new_model()
    if src.random_weights and src.weights:
        raise ValueError("--source.random_weights: the ablation searches the random initialisation; it cannot be "
                         f"combined with --source.weights {src.weights!r}")
    if src.random_weights:
        log.warning("searching RANDOM weights (--random-weights ablation), not pre-trained ones")
        return model, "random", job.trainer(model, job.hp.search_training).evaluate()["test_acc"]
    if src.weights:
        path = resolve_weights(src.weights)
        load_weights(model, path)
        return model, f"file:{path}", job.trainer(model, job.hp.search_training).evaluate()["test_acc"]
    if not src.train_dense:
        raise ValueError("--source.weights: this configuration needs pre-trained weights (a file or a run directory); "
                         "--source.train_dense true trains them here")
    result = job.trainer(model, job.hp.pretrain, job.dir / "pretrain", batch_size=job.hp.dataset.batch_size).train()
    return model, f"trained:{job.dir / 'pretrain'}", result.metrics["test_acc"]


def _criterion_ticket(job: _Job, model, criterion: str, sparsity: float, names: list[str]):
    """The mask a pruning criterion gives at ``sparsity`` over the searched weights (on a copy of ``model``)."""
    import torch
    import torch.nn.functional as F

    from lth_kernels.tickets import Ticket, prune
    from lth_kernels.tickets.prunable import iter_maskable

    m = copy.deepcopy(model).to(job.device)
    others = [n for n, _, _ in iter_maskable(m) if n not in set(names)]
    kw = {}
    if criterion in ("snip", "grasp", "synflow"):
        loader = torch.utils.data.DataLoader(job.train_ds, batch_size=min(job.batch, 256), shuffle=True,
                                             generator=torch.Generator().manual_seed(job.hp.search.seed))
        x, y = next(iter(loader))
        kw = {"data": [(x.to(job.device), y.to(job.device))], "loss_fn": F.cross_entropy}
    if criterion == "random":
        kw = {"generator": torch.Generator().manual_seed(job.hp.search.seed)}
    scope = "global" if job.hp.search.layerwise == "l1" else "layerwise"
    t = prune(m, criterion, sparsity, scope=scope, exclude=others, use_default_exclude=False, **kw)
    return Ticket({n: t[n] for n in names}, t.metadata)


def search_label(rule: str, init: str, default_init: str) -> str:
    """The key (and directory) of a search: the rule, with ``@<init>`` when its scores start otherwise than the
    rule's usual initialisation."""
    return rule if init == default_init else f"{rule}@{init}"


def _search_rule(job: _Job, weights_model, ticket0, rule: str, sd: Path, source: str,
                 score_init: str = "magnitude", label: str | None = None) -> dict:
    """One search with ``rule`` in ``sd / label``; writes the ticket, the weights and the swaps; returns its
    record."""
    from lth_kernels.nn.scored import unscore_layers
    from lth_kernels.tickets import Ticket
    from lth_kernels.training import atomic_write_json, read_metrics, save_weights
    from lth_kernels.workflows.jackpot.search import run_search

    label = label or rule
    hp, rd = job.hp.search, sd / label.replace("@", "_")
    model = copy.deepcopy(weights_model)
    result, swaps, _ = run_search(model, ticket0, job.train_ds, job.test_ds, job.hp.search_training,
                                  batch_size=job.batch, rule=rule, rho=hp.rho, rho_schedule=hp.rho_schedule,
                                  pruned_score=hp.pruned_score, seed=hp.seed, out_dir=rd, device=job.device,
                                  progress=job.progress, score_init=score_init)
    if result.skipped:
        history = json.loads((rd / "swaps.json").read_text())
    else:
        history = swaps.history
        atomic_write_json(rd / "swaps.json", history)
    masks = unscore_layers(model)
    ticket = Ticket(masks, {**ticket0.metadata, "strategy": f"jackpot_{rule}", "source_weights": source,
                            "score_init": score_init,
                            "rho": hp.rho if rule != "edge_popup" else "", "rho_schedule": hp.rho_schedule,
                            "search_steps": job.hp.search_training.training_steps})
    ticket.save(rd / "mask.safetensors")
    ticket.save_report(rd / "sparsity_report.json")
    save_weights(model, rd / "weights.safetensors", {"mask": "mask.safetensors", "source_weights": source})
    records = [r for r in read_metrics(rd / "metrics.jsonl") if "test_acc" in r]
    return {"rule": rule, "score_init": score_init, "model": model, "ticket": ticket,
            "acc": result.metrics["test_acc"],
            "start_acc": records[0]["test_acc"] if records and records[0]["step"] == 0 else None,
            "curve": [(r["epoch"], r["test_acc"]) for r in records], "swaps": history}


def recalibrate_bn(model, train_ds, *, batches: int, batch_size: int, device, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` (in place) on ``batches`` training batches:
    statistics reset, then train-mode forward passes with the cumulative average (``momentum=None``), weights
    untouched. Returns the number of BN layers recalibrated (0: nothing to do)."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or batches <= 0:
        return 0
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    was = model.training
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(device))
    model.train(was)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return len(bns)


def _magnitude_acc(job: _Job, model, ticket0, sd: Path) -> dict:
    """Test accuracy of the magnitude mask without any search, after recalibrating the BN statistics on
    training batches (a masked network's activations shift, so the pre-trained statistics would understate
    it); the uncalibrated value is kept beside it. Cached in ``magnitude_mask.json``."""
    from lth_kernels.training import atomic_write_json

    path = sd / "magnitude_mask.json"
    if path.exists():
        return json.loads(path.read_text())
    m = copy.deepcopy(model)
    ticket0.apply(m)
    raw = job.trainer(m, job.hp.search_training).evaluate()["test_acc"]
    n = recalibrate_bn(m.to(job.device), job.train_ds, batches=job.hp.search.bn_recalibration_batches,
                       batch_size=min(job.batch, len(job.train_ds)), device=job.device, seed=job.hp.search.seed)
    out = {"acc": job.trainer(m, job.hp.search_training).evaluate()["test_acc"] if n else raw,
           "acc_no_recalibration": raw, "recalibration_batches": job.hp.search.bn_recalibration_batches if n else 0}
    atomic_write_json(path, out)
    return out


def _finetune(job: _Job, res: dict, rd: Path) -> float:
    """Train the weights with the searched mask frozen (masked layers keep pruned weights at zero)."""
    from lth_kernels.training import save_weights

    model = copy.deepcopy(res["model"])
    res["ticket"].apply(model)
    for p in model.parameters():
        p.requires_grad_(True)
    result = job.trainer(model, job.hp.finetune, rd / "finetune").train()
    save_weights(model, rd / "finetune" / "weights.safetensors", {"mask": "../mask.safetensors"})
    return result.metrics["test_acc"]


def run(hp: JackpotHparams, root: str | Path = "runs", device: str | None = None, progress: bool = True) -> dict:
    """Run (or resume) the whole workflow; returns the summary also written to ``summary.json``."""
    from lth_kernels.training import atomic_write_json
    from lth_kernels.workflows.jackpot.report import write_report
    from lth_kernels.workflows.jackpot.search import initial_ticket

    job = _Job(hp, root, device, progress)
    model, source, dense_acc = _weights(job)
    model = model.cpu()
    summary = {"run_dir": str(job.dir), "model": hp.model.name, "dataset": hp.dataset.name, "source": source,
               "dense_acc": dense_acc, "sparsities": {}}
    for s_text in hp.search.sparsities:
        s = float(s_text)
        sd = job.dir / f"sparsity_{s_text}"
        ticket0 = initial_ticket(model, s, hp.search.layerwise, hp.search.exclude)
        ticket0 = ticket0.with_metadata(pruned_score=hp.search.pruned_score)
        ticket0.save(sd / "magnitude_mask.safetensors")
        entry = {"sparsity": ticket0.sparsity, "searched_weights": ticket0.num_total, "rules": {}}
        results = {}
        searches = [(hp.search.rule, init, search_label(hp.search.rule, init, "magnitude"))
                    for init in hp.search.score_init]
        searches += [(rule, hp.search.edge_popup_init if rule == "edge_popup" else "magnitude",
                      search_label(rule, hp.search.edge_popup_init, "kaiming") if rule == "edge_popup" else rule)
                     for rule in hp.search.baselines]
        for rule, init, label in searches:
            res = _search_rule(job, model, ticket0, rule, sd, source, init, label)
            results[label] = res
            entry["rules"][label] = {"acc": res["acc"], "curve": res["curve"], "swaps": res["swaps"],
                                     "score_init": init, "overlap_with_magnitude_init": res["ticket"].overlap(ticket0)}
        entry["magnitude_acc"] = _magnitude_acc(job, model, ticket0, sd)
        main = results[searches[0][2]]
        if hp.search.finetune:
            entry["finetuned_acc"] = _finetune(job, main, sd / searches[0][2].replace("@", "_"))
        overlap_file = sd / "overlap.json"
        if overlap_file.exists():
            overlaps = json.loads(overlap_file.read_text())
        else:
            names = list(ticket0)
            overlaps = {c: main["ticket"].overlap(_criterion_ticket(job, model, c, s, names))
                        for c in hp.search.criteria}
            overlaps.update({f"jackpot_{label}": results[label]["ticket"].overlap(main["ticket"])
                             for _, _, label in searches[1:]})
            atomic_write_json(overlap_file, overlaps)
        entry["overlap"] = overlaps
        summary["sparsities"][s_text] = entry
    atomic_write_json(job.dir / "summary.json", summary)
    write_report(job.dir, summary, hp)
    return summary

log = logging.getLogger(__name__)
