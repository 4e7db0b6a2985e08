"""IMP branches: controls trained on each pruned level's ticket (open_lth ``lottery/branch``).

A branch is a function ``fn(runner, replicate, level, options, out_dir)`` that builds a model and a
ticket and calls ``runner.train_stage``; ``options`` is the ``ImpHparams`` group named in its registry
entry (its non-default values name the branch directory, ``<name>-<hash>``). Adding a branch is one
function with one ``@register_branch`` line (and an options group in ``ImpHparams`` if it has options).
Masks are decided on rank 0 only (``runner.train_stage`` takes a ticket *factory* it calls there).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Branch:
    name: str
    fn: Callable
    options: str | None  # the ImpHparams field holding the branch's options
    help: str


BRANCHES: dict[str, Branch] = {}


def register_branch(name: str, options: str | None = None) -> Callable:
    def deco(fn: Callable) -> Callable:
        if name in BRANCHES:
            raise ValueError(f"name: branch {name!r} is already registered")
        BRANCHES[name] = Branch(name, fn, options, ((fn.__doc__ or "").strip().splitlines() or [""])[0])
        return fn

    return deco


def derived_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (distinct tuples give unrelated seeds, unlike sums of seeds)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def branch_dir_name(hp, name: str) -> str:
    """``name``, or ``name-<hash>`` when the branch's options differ from their defaults."""
    field = BRANCHES[name].options
    opts = getattr(hp, field) if field else None
    return f"{name}-{opts.hashname(8)}" if opts is not None and opts.non_default() else name


@register_branch("random_reinit", options="random_reinit")
def random_reinit(runner, replicate: int, level: int, opts, out_dir):
    """The level's mask on a fresh random initialisation (open_lth randomly_reinitialize)."""
    training = runner.training_for(replicate)
    model = runner.new_model(derived_seed("random_reinit", training.seed, level, opts.seed))
    start = 0 if opts.start_at_step_zero else runner.rewind_step
    return runner.train_stage(model, lambda: runner.main_ticket(replicate, level).with_metadata(
        branch="random_reinit"), out_dir, training, start)


@register_branch("random_prune", options="random_prune")
def random_prune(runner, replicate: int, level: int, opts, out_dir):
    """The level's per-layer (or global) density at random places, from θ_K, θ₀ or the end (randomly_prune)."""
    from lth_kernels.tickets import shuffle

    training = runner.training_for(replicate)
    if opts.start_at == "rewind":
        model, start = runner.rewound_model(replicate), runner.rewind_step
    elif opts.start_at == "init":
        model, start = runner.initial_model(replicate), 0
    else:  # the level's own trained weights, retrained from step 0 under the random mask
        model, start = runner.load_final(runner.new_model(training.seed), runner.level_dir(replicate, level)), 0

    def make():
        import torch

        g = torch.Generator().manual_seed(derived_seed("random_prune", training.seed, level, opts.seed))
        return shuffle(runner.main_ticket(replicate, level), scope=opts.scope, generator=g,
                       exclude=runner.exclude_globs(model)).with_metadata(branch="random_prune")

    return runner.train_stage(model, make, out_dir, training, start)


@register_branch("retrain", options="retrain")
def retrain(runner, replicate: int, level: int, opts, out_dir):
    """The level's ticket trained with other data / training hparams (ticket transfer, open_lth retrain)."""
    hp = runner.hp
    dataset = hp.dataset.with_overrides(opts.dataset)
    training = runner.training_for(replicate).with_overrides(opts.training)
    data = runner.data_for(dataset)
    model = runner.new_model(training.seed, info=data[2])
    if opts.transfer_learn:
        runner.load_final(model, runner.level_dir(replicate, level))
    else:
        runner.load_rewind(model, replicate)
    start = 0 if opts.start_at_step_zero else runner.rewind_step
    return runner.train_stage(model, lambda: runner.main_ticket(replicate, level).with_metadata(branch="retrain"),
                              out_dir, training, start, data=data, batch_size=dataset.batch_size)


LMC = "lmc.json"


@register_branch("lmc", options="lmc")
def lmc(runner, replicate: int, level: int, opts, out_dir):
    """Instability: two copies of the ticket from θ_K with other data orders, error along their line (lmc.json)."""
    from lth_kernels.tickets import Ticket
    from lth_kernels.training.connectivity import COPY_SEEDS, interpolate
    from lth_kernels.training.rundir import atomic_write_json

    training = runner.training_for(replicate)
    ticket = lambda: runner.main_ticket(replicate, level).with_metadata(branch="lmc")
    dirs = (out_dir, out_dir / "copy_b")  # copy a is the branch's own stage, so the report lists its accuracy
    results = [runner.train_stage(runner.rewound_model(replicate), ticket, d, training.replace(
        data_order_seed=training.data_order_seed + offset), runner.rewind_step) for d, offset in zip(dirs, COPY_SEEDS)]
    if runner.is_main and not (out_dir / LMC).exists():
        states = []
        for d in dirs:
            model = runner.new_model(training.seed)
            Ticket.load(d / "mask.safetensors").apply(model)
            runner.load_final(model, d)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        evaluator = runner.evaluator(model, training)
        atomic_write_json(out_dir / LMC, interpolate(model, *states, lambda: 1.0 - evaluator.evaluate()["test_acc"],
                                                     opts.points))
    return results[0]
