"""The IMP runner's contract beyond the densities: what each stage's Trainer is given, the replicate seeds, the
provenance written into every level's ticket, --init.weights / --init.ticket, layerwise fraction_by, the log a
user reads, and the one-line errors of its helpers. Tiny budgets (3 iterations a stage)."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lth_kernels.tickets import Ticket
from lth_kernels.training import Callback
from lth_kernels.workflows.imp import runner as runner_mod
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import ImpRunner, run_imp
from lth_kernels.workflows.imp.runner import _with_val as with_val

TINY = {"training.training_steps": "3it", "training.eval_every": "0it", "levels": 1}
PRUNABLE = ("fc_layers.0.weight", "fc_layers.1.weight")


def _hp(**overrides) -> ImpHparams:
    return ImpHparams.from_preset(**{**TINY, **overrides})


class _Spy(runner_mod.Trainer):
    """The runner's Trainer, recording the keyword arguments of every construction."""

    made: list = []

    def __init__(self, *args, **kwargs):
        _Spy.made.append(kwargs)
        super().__init__(*args, **kwargs)


def test_every_trainer_gets_the_runners_device_progress_callbacks_and_validation_set(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "Trainer", _Spy)
    _Spy.made = []
    probe = ImpRunner(_hp(), root=tmp_path / "probe", progress=False)
    train, test, info, _ = probe.data
    val = torch.utils.data.Subset(test, range(40))
    seen = []

    class Recorder(Callback):
        def on_train_start(self, trainer, step):
            seen.append(str(trainer.out_dir))

    rec = Recorder()
    runner = ImpRunner(_hp(), root=tmp_path, progress=False, device="cpu", callbacks=[rec],
                       data=(train, test, info, val))
    path = runner.run()
    stages = [kw for kw in _Spy.made if kw.get("out_dir") is not None and Path(kw["out_dir"]).is_relative_to(path)]
    assert [Path(kw["out_dir"]).relative_to(path).as_posix() for kw in stages] == [
        "replicate_0/pretrain", "replicate_0/level_0/main", "replicate_0/level_1/main"]
    for kw in stages:
        assert kw["device"] == "cpu" and kw["progress"] is False and kw["val_ds"] is val
        assert kw["callbacks"] == [rec]
    assert stages[0]["save_steps"] == [0]  # θ₀ is kept for the branches that start from it
    assert len(seen) == 3
    _Spy.made = []
    runner.evaluator(runner.replicate_model(0), runner.training_for(0))
    (kw,) = _Spy.made
    assert kw["progress"] is False and kw["device"] == "cpu" and kw.get("out_dir") is None


def test_replicates_shift_both_seeds_and_start_from_their_own_init(tmp_path):
    hp = _hp(replicates=2, levels=0)
    runner = ImpRunner(hp, root=tmp_path, progress=False)
    base = hp.training
    for r in range(3):
        t = runner.training_for(r)
        assert (t.seed, t.data_order_seed) == (base.seed + r, base.data_order_seed + r)
        assert t.replace(seed=base.seed, data_order_seed=base.data_order_seed) == base  # nothing else changes
    path = runner.run()
    inits = []
    for r in range(2):
        saved = runner.initial_model(r).state_dict()
        fresh = runner.new_model(base.seed + r).state_dict()
        assert all(torch.equal(saved[k], fresh[k]) for k in fresh)  # θ₀ is the seeded init of that replicate
        inits.append(saved)
    assert not torch.equal(inits[0]["fc_layers.0.weight"], inits[1]["fc_layers.0.weight"])
    assert (path / "replicate_1" / "level_0" / "main" / "done.json").exists()


def test_level_tickets_record_their_provenance(tmp_path):
    hp = _hp(rewind="1it")
    path = run_imp(hp, root=tmp_path, progress=False)
    assert path.parent == tmp_path
    for level in (0, 1):
        meta = Ticket.load(path / "replicate_0" / f"level_{level}" / "main" / "mask.safetensors").metadata
        assert meta["source_run"] == path.name and meta["replicate"] == "0" and meta["rewind"] == "1it"
        assert meta["level"] == str(level)
        assert "init_ticket" not in meta
    assert Ticket.load(path / "replicate_0" / "level_1" / "main" / "mask.safetensors").metadata["strategy"] == \
        "magnitude"


def test_init_weights_and_init_ticket_start_the_run(tmp_path):
    probe = ImpRunner(_hp(), root=tmp_path / "probe", progress=False)
    model = probe.new_model(123)
    weights = tmp_path / "theta0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    g = torch.Generator().manual_seed(0)
    ones = Ticket.ones(model)
    given = Ticket({n: (torch.rand(ones[n].shape, generator=g) > 0.5) if n in PRUNABLE else ones[n] for n in ones})
    ticket_file = given.save(tmp_path / "given.safetensors")
    hp = _hp(**{"init.weights": str(weights), "init.ticket": str(ticket_file)})
    runner = ImpRunner(hp, root=tmp_path / "runs", progress=False)
    path = runner.run()
    theta0 = runner.initial_model(0).state_dict()
    assert all(torch.equal(theta0[k], v) for k, v in model.state_dict().items())  # step 0 is the given θ₀
    level0 = Ticket.load(path / "replicate_0" / "level_0" / "main" / "mask.safetensors")
    assert level0.equal(given)
    assert level0.metadata["level"] == "0" and level0.metadata["init_ticket"] == str(ticket_file)
    assert level0.metadata["source_run"] == path.name and level0.metadata["replicate"] == "0"
    level1 = Ticket.load(path / "replicate_0" / "level_1" / "main" / "mask.safetensors")
    for name in PRUNABLE:  # level 1 prunes further inside the given mask
        assert not bool((level1[name] & ~given[name]).any()) and int(level1[name].sum()) < int(given[name].sum())
    bad = Ticket({"fc_layers.0.weight": torch.ones(3, 3, dtype=torch.bool)}).save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="fc_layers.0.weight") as info:
        run_imp(_hp(**{"init.ticket": str(bad)}), root=tmp_path / "runs2", progress=False)
    assert "\n" not in str(info.value)


def test_layerwise_fraction_by_prunes_each_layer_at_its_own_rate(tmp_path):
    # layerwise: each of the two hidden layers loses 20 % of its own weights a level (a global ranking would not
    # keep their counts); fraction_by makes the output layer (excluded by the model) prunable at its own 10 %
    hp = _hp(levels=2, **{"pruning.scope": "layerwise", "pruning.fraction_by": {"fc.weight": 0.1}})
    path = run_imp(hp, root=tmp_path, progress=False)
    level0 = Ticket.load(path / "replicate_0" / "level_0" / "main" / "mask.safetensors")
    sizes = {name: level0[name].numel() for name in (*PRUNABLE, "fc.weight")}
    rates = {"fc_layers.0.weight": hp.pruning.fraction, "fc_layers.1.weight": hp.pruning.fraction, "fc.weight": 0.1}
    for level in (1, 2):
        ticket = Ticket.load(path / "replicate_0" / f"level_{level}" / "main" / "mask.safetensors")
        for name, size in sizes.items():
            kept = size
            for _ in range(level):
                kept -= -(-round(rates[name] * kept, 9) // 1)
            assert int(ticket[name].sum()) == kept, name
        report = json.loads((path / "replicate_0" / f"level_{level}" / "main" / "sparsity_report.json").read_text())
        assert report["excluded"] == []


def test_exclude_globs_are_the_maskable_weights_the_main_run_keeps(tmp_path):
    runner = ImpRunner(_hp(levels=0), root=tmp_path, progress=False)
    model = runner.replicate_model(0)
    assert runner.exclude_globs(model) == ("fc.weight",)  # the model's own exclusion
    hp = _hp(levels=0, **{"pruning.exclude": ("fc_layers.0.weight",)})
    assert ImpRunner(hp, root=tmp_path, progress=False).exclude_globs(model) == ("fc_layers.0.weight", "fc.weight")
    hp = _hp(levels=0, **{"pruning.fraction_by": {"fc.weight": 0.1}})
    assert ImpRunner(hp, root=tmp_path, progress=False).exclude_globs(model) == ()


def test_other_ranks_start_from_all_ones_and_never_decide_a_mask(tmp_path):
    # on a rank other than 0 the ticket factory is not called and nothing is written before training; the
    # Trainer's broadcast then gives every rank rank 0's masks (tests/workflows/imp/test_runner.py, torchrun)
    runner = ImpRunner(_hp(levels=0), root=tmp_path, progress=False)
    runner.is_main = False
    asked = []
    model = runner.replicate_model(0)
    out = tmp_path / "rank1"
    runner.train_stage(model, lambda: asked.append(1), out, runner.training_for(0), 0)
    assert asked == [] and not (out / "mask.safetensors").exists()
    masks = [m.mask for m in model.modules() if hasattr(m, "mask")]
    assert masks and all(bool(m.all()) for m in masks)


def test_a_registered_branch_runs_under_its_own_ticket_and_is_logged(tmp_path, caplog):
    # the plug-in contract of branches.py: one function, one @register_branch line; a branch without options gets
    # None, its own directory and ticket, and its log line reads its own report
    import dataclasses

    from lth_kernels.workflows.imp import branches as br

    seen = []

    def dense_control(runner, replicate, level, opts, out_dir):
        """The rewound weights trained dense (a control with its own ticket)."""
        seen.append((level, opts, out_dir.name))
        res = runner.train_stage(runner.rewound_model(replicate), lambda: Ticket.ones(runner.replicate_model(0)),
                                 out_dir, runner.training_for(replicate), runner.rewind_step)
        return dataclasses.replace(res, metrics={})  # no accuracy to report: the line says nan

    br.register_branch("dense_control_test")(dense_control)
    try:
        hp = _hp(branches=("random_reinit", "dense_control_test"))
        with caplog.at_level(logging.INFO, logger="lth_kernels"):
            path = run_imp(hp, root=tmp_path, progress=False)
    finally:
        br.BRANCHES.pop("dense_control_test")
    assert seen == [(1, None, "dense_control_test")]
    lines = [r.getMessage() for r in caplog.records if r.name == runner_mod.log.name]
    assert "branches: random_reinit,dense_control_test," in lines[0]
    assert lines[-1] == "replicate 0 | level 1 | dense_control_test | density 100.00% | test_acc nan"
    assert Ticket.load(path / "replicate_0" / "level_1" / "dense_control_test" / "mask.safetensors").prunable_density \
        == 1.0


def test_the_log_names_every_stage_with_its_density_and_accuracy(tmp_path, caplog):
    hp = _hp(branches=("random_reinit",))
    with caplog.at_level(logging.INFO, logger="lth_kernels"):
        path = run_imp(hp, root=tmp_path, progress=False)
    runner = ImpRunner(hp, root=tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == runner_mod.log.name]
    assert lines[0] == (f"imp run {path}: 1 levels, 1 replicate(s), branches: random_reinit, rewind to step 0 of "
                        f"{runner.end_step}")

    def stage_line(level, name, suffix=""):
        d = path / "replicate_0" / f"level_{level}" / name
        density = json.loads((d / "sparsity_report.json").read_text())["prunable"]["density"]
        acc = json.loads((d / "done.json").read_text())["metrics"]["test_acc"]
        return f"replicate 0 | level {level} | {name:<14} | density {100 * density:6.2f}% | test_acc {acc:.4f}{suffix}"

    assert lines[1:] == [stage_line(0, "main"), stage_line(1, "main"), stage_line(1, "random_reinit")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lth_kernels"):
        run_imp(hp, root=tmp_path, progress=False)  # everything is done: each stage says so
    lines = [r.getMessage() for r in caplog.records if r.name == runner_mod.log.name]
    assert lines[1:] == [stage_line(0, "main", " (done before)"), stage_line(1, "main", " (done before)"),
                         stage_line(1, "random_reinit", " (done before)")]
    assert "branches: none" in next(r.getMessage() for r in _header(tmp_path / "plain", caplog))


def _header(root, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lth_kernels"):
        run_imp(_hp(levels=0), root=root, progress=False)
    return [r for r in caplog.records if r.name == runner_mod.log.name]


def test_run_imp_defaults_to_runs_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = []

    class Recorder(Callback):
        def on_train_start(self, trainer, step):
            started.append(trainer.out_dir.name)

    path = run_imp(_hp(levels=0), progress=False, callbacks=[Recorder()])  # keyword arguments reach the runner
    assert path.parent.resolve() == (tmp_path / "runs").resolve()
    assert started == ["pretrain", "main"]


def test_helper_errors_are_one_line_and_name_the_problem(tmp_path):
    runner = ImpRunner(_hp(levels=0), root=tmp_path, progress=False)
    train, test, info, _ = runner.data
    assert with_val((train, test, info)) == (train, test, info, None)
    assert with_val((train, test, info, test)) == (train, test, info, test)
    with pytest.raises(ValueError, match=r"^data: expected \(train, test, info\[, val\]\), got a tuple of 2$"):
        with_val((train, test))
    with pytest.raises(ValueError, match="got a tuple of 5"):
        ImpRunner(_hp(levels=0), root=tmp_path, progress=False, data=(train, test, info, None, None))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(FileNotFoundError, match=f"^{unfinished} has not finished training \\(no done.json\\)$"):
        ImpRunner.load_final(runner.replicate_model(0), unfinished)


def test_runner_defaults_and_start_checks(tmp_path, monkeypatch, caplog):
    # defaults: runs/ under the working directory, progress bars on, no callbacks; each bad start is one line
    # naming the flag (with the caller's flag prefix) and leaves no run directory behind
    monkeypatch.chdir(tmp_path)
    runner = ImpRunner(_hp(levels=0))
    assert runner.path.parent.resolve() == (tmp_path / "runs").resolve() and runner.path.name.startswith("imp-")
    assert runner.progress is True and runner.callbacks == [] and runner.device is None
    assert runner.num_levels == 0 and json.loads((runner.path / "hparams.json").read_text()) == _hp(levels=0).to_dict()
    train, test, info, _ = runner.data
    bs = _hp().dataset.batch_size
    one_step = ImpRunner(_hp(levels=0, **{"training.training_steps": "1ep"}), root=tmp_path / "one",
                         data=(torch.utils.data.Subset(train, range(bs)), test, info))
    assert one_step.steps_per_epoch == 1 and one_step.end_step == 1
    assert isinstance(ImpRunner(_hp(levels=0), root=tmp_path / "int", data=(torch.utils.data.Subset(
        train, range(bs + bs // 2)), test, info)).steps_per_epoch, int)
    cases = [
        (dict(data=(torch.utils.data.Subset(train, range(bs - 1)), test, info)), ValueError,
         f"^--dataset.batch_size: {bs} is larger than the training set \\({bs - 1} samples\\)$"),
        (dict(hp=_hp(rewind="3it")), ValueError,
         r"^--rewind: 3it \(3 steps\) is not before the end of training \(--training.training_steps 3it = 3 steps "
         r"of \d+ per epoch\)$"),
        (dict(hp=_hp(**{"model.name": "nope_net"})), ValueError, "^--model"),
        (dict(hp=_hp(**{"init.weights": str(tmp_path / "none.safetensors")})), FileNotFoundError,
         f"^--init.weights: no file at {tmp_path / 'none.safetensors'}$"),
        (dict(hp=_hp(**{"init.ticket": str(tmp_path / "none.safetensors")})), FileNotFoundError,
         f"^--init.ticket: no file at {tmp_path / 'none.safetensors'}$"),
        (dict(hp=_hp(**{"init.ticket": str(tmp_path / "none.safetensors")}), flag_prefix="imp."), FileNotFoundError,
         "^--imp.init.ticket: no file at "),
        (dict(hp=_hp(**{"model.name": "nope_net"}), flag_prefix="imp."), ValueError, "^--imp.model"),
        (dict(hp=_hp(**{"dataset.name": "nope_data"})), ValueError, "^--dataset"),
        (dict(hp=_hp(**{"dataset.name": "nope_data"}), flag_prefix="imp."), ValueError, "^--imp.dataset"),
    ]
    for kwargs, exc, pattern in cases:
        root = tmp_path / "bad"
        with pytest.raises(exc, match=pattern) as err:
            ImpRunner(kwargs.pop("hp", _hp()), root=root, progress=False, **kwargs)
        assert "\n" not in str(err.value) and not root.exists(), pattern
    with caplog.at_level(logging.WARNING, logger="lth_kernels"):
        ImpRunner(_hp(levels=2, **{"pruning.structure": "2:4"}), root=tmp_path / "nm", progress=False)
        ImpRunner(_hp(levels=1, **{"pruning.structure": "2:4"}), root=tmp_path / "nm1", progress=False)
        ImpRunner(_hp(levels=3), root=tmp_path / "plain", progress=False)
    warned = [r.getMessage() for r in caplog.records if r.name == runner_mod.log.name]
    assert warned == ["--pruning.structure 2:4 has a fixed density: running 1 pruned level, not 2"]
    # the up-front model check builds on the meta device (no memory, no init: a large model costs nothing there)
    built = []
    real = runner_mod.make_model
    monkeypatch.setattr(runner_mod, "make_model", lambda *a, **kw: built.append(kw) or real(*a, **kw))
    ImpRunner(_hp(levels=0), root=tmp_path / "meta", progress=False)
    assert built[0] == {"meta": True}


def test_auto_threads_follow_the_training_device(tmp_path):
    # "auto": one thread for a small model trained on the CPU (given as "cpu", or no device on a machine without
    # CUDA); a CUDA device leaves torch's setting alone
    before = torch.get_num_threads()
    try:
        for device, want in (("cuda", 2), (None, 2 if torch.cuda.is_available() else 1), ("cpu", 1)):
            torch.set_num_threads(2)
            ImpRunner(_hp(levels=0), root=tmp_path, progress=False, threads="auto", device=device)
            assert torch.get_num_threads() == want, device
        params = sum(p.numel() for p in ImpRunner(_hp(levels=0), root=tmp_path, progress=False).new_model(0)
                     .parameters())
        for limit, want in ((params, 2), (params + 1, 1)):  # "under SMALL_MODEL parameters": strictly
            torch.set_num_threads(2)
            ImpRunner.SMALL_MODEL, saved = limit, ImpRunner.SMALL_MODEL
            try:
                ImpRunner(_hp(levels=0), root=tmp_path, progress=False, threads="auto", device="cpu")
            finally:
                ImpRunner.SMALL_MODEL = saved
            assert torch.get_num_threads() == want, limit
    finally:
        torch.set_num_threads(before)


def test_job_fields_are_rewritten_into_the_same_run_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    first = ImpRunner(_hp(levels=1), root=tmp_path, progress=False)
    again = ImpRunner(_hp(levels=3, replicates=2), root=tmp_path, progress=False)  # job fields: same run name
    assert again.path == first.path
    assert json.loads((first.path / "hparams.json").read_text()) == _hp(levels=3, replicates=2).to_dict()
    monkeypatch.setattr(runner_mod, "is_main_process", lambda: False)
    other = ImpRunner(_hp(levels=1), root=tmp_path / "rank1", progress=False)
    assert other.is_main is False and not (tmp_path / "rank1").exists()


def test_data_is_built_once_per_distinct_dataset(tmp_path):
    # the retrain branch asks for its own data set; the same settings give the same (cached) tensors
    runner = ImpRunner(_hp(levels=0), root=tmp_path, progress=False)
    main = runner.data_for(runner.hp.dataset)
    assert main is runner.data and runner.data_for(runner.hp.dataset.replace()) is main
    held_out = runner.data_for(runner.hp.dataset.replace(validation=100))
    assert held_out is not main and len(held_out[0]) == len(main[0]) - 100 and len(held_out[3]) == 100
