"""IMP branches beyond the core controls: random_prune's start points, branches on a level range, and the lmc
(instability) branch."""

import json

import pytest
import torch

from lth_kernels.tickets import Ticket
from lth_kernels.training.checkpoint import load_step
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.imp.branches import branch_dir_name
from lth_kernels.workflows.imp.hparams import ImpHparams, parse_levels
from lth_kernels.workflows.imp.report import build_summary, format_table
from lth_kernels.workflows.imp.runner import ImpRunner

FAST = {"training.training_steps": "4it", "training.eval_every": "0it", "rewind": "2it"}


def _spy_start_weights(runner) -> dict:
    """{(level, stage directory name): (state_dict, start_step)} the runner hands to each stage, before masking."""
    seen = {}
    real = runner.train_stage

    def spy(model, ticket, out_dir, training, start_step, **kw):
        key = (int(out_dir.parent.name.removeprefix("level_")), out_dir.name)
        seen[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, start_step)
        return real(model, ticket, out_dir, training, start_step, **kw)

    runner.train_stage = spy
    return seen


@pytest.mark.parametrize("start_at", ["init", "end"])
def test_random_prune_start_points(tmp_path, start_at):
    hp = ImpHparams.from_preset(**FAST, levels=1, branches=("random_prune",), **{"random_prune.start_at": start_at})
    runner = ImpRunner(hp, tmp_path, progress=False)
    seen = _spy_start_weights(runner)
    runner.run()
    seen = {name: v for (level, name), v in seen.items() if level == 1}
    branch = next(d for d in (runner.path / "replicate_0/level_1").iterdir() if d.name.startswith("random_prune"))
    state, start = seen[branch.name]
    assert start == 0 and json.loads((branch / "done.json").read_text())["start_step"] == 0
    expect = runner.new_model(0)
    if start_at == "init":
        load_step(runner.replicate_dir(0) / "pretrain", 0, expect)  # θ₀
    else:
        runner.load_final(expect, runner.level_dir(0, 1))  # the level's trained weights
    for k, v in expect.state_dict().items():
        assert torch.equal(state[k], v), k
    # not the rewind weights
    rewound = runner.rewound_model(0).state_dict()
    assert any(not torch.equal(state[k], rewound[k]) for k in rewound)


def test_branches_on_a_level_range_and_parse_levels(tmp_path):
    hp = ImpHparams.from_preset(**FAST, levels=3, branches=("random_reinit",), branch_levels="2-3")
    runner = ImpRunner(hp, tmp_path, progress=False)
    runner.run()
    has = {lvl: (runner.path / f"replicate_0/level_{lvl}/random_reinit/done.json").exists() for lvl in (1, 2, 3)}
    assert has == {1: False, 2: True, 3: True}
    assert hp.hashname() == ImpHparams.from_preset(**FAST, levels=3).hashname()  # a job field
    assert parse_levels("1,3,5-7") == {1, 3, 5, 6, 7} and parse_levels("") is None
    for bad in ("3-", "a", "5-2"):
        with pytest.raises(HparamsError, match="^--branch_levels: "):
            ImpHparams.from_preset(branch_levels=bad)


def test_lmc_branch_writes_the_error_along_the_line(tmp_path):
    hp = ImpHparams.from_preset(**FAST, levels=1, branches=("lmc",), **{"lmc.points": 3})
    runner = ImpRunner(hp, tmp_path, progress=False)
    runner.run()
    lmc = runner.level_dir(0, 1, branch_dir_name(hp, "lmc"))
    assert lmc.name.startswith("lmc-")  # non-default options name the branch directory
    out = json.loads((lmc / "lmc.json").read_text())
    assert out["alphas"] == [0, 0.5, 1]
    ends = [json.loads((d / "done.json").read_text())["metrics"]["test_acc"] for d in (lmc, lmc / "copy_b")]
    assert out["test_error"][0] == pytest.approx(1 - ends[0]) and out["test_error"][-1] == pytest.approx(1 - ends[1])
    err = out["test_error"]
    assert out["instability"] == pytest.approx(max(err) - (err[0] + err[2]) / 2)
    # the two copies share the ticket and θ_K but not the data order: other final weights
    a, b = (runner.load_final(runner.new_model(0), d).state_dict() for d in (lmc, lmc / "copy_b"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    mine, main = (Ticket.load(d / "mask.safetensors") for d in (lmc, runner.level_dir(0, 1)))
    assert mine.keys() == main.keys() and all(torch.equal(mine[n], main[n]) for n in main)
    s = build_summary(runner.path)
    assert s["levels"]["1"][lmc.name]["instability"]["mean"] == pytest.approx(out["instability"])
    assert f"{branch_dir_name(hp, 'lmc')} instability %" in format_table(s).splitlines()[2]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_random_reinit_starts_from_a_fresh_init(tmp_path):
    """Each level's random_reinit starts from new random weights: drawn like θ₀ (same per-layer scale), but
    uncorrelated with θ₀, θ_K, the previous level's trained weights and the other levels' re-inits."""
    hp = ImpHparams.from_preset(**FAST, levels=2, branches=("random_reinit",))
    runner = ImpRunner(hp, tmp_path, progress=False)
    seen = _spy_start_weights(runner)
    runner.run()
    init = runner.initial_model(0).state_dict()
    others = {"θ0": init, "θK": runner.rewound_model(0).state_dict()}
    for level in (0, 1, 2):
        trained = runner.load_final(runner.new_model(0), runner.level_dir(0, level))
        others[f"level {level} trained"] = trained.state_dict()
    reinits = {level: seen[(level, "random_reinit")] for level in (1, 2)}
    for level, (state, start) in reinits.items():
        assert start == runner.rewind_step  # the default: trained from the rewind step, as the main run
        for k, w in init.items():
            if w.dim() < 2:
                continue  # biases may start at a constant
            assert float(state[k].std()) == pytest.approx(float(w.std()), rel=0.15), (level, k)
            for what, other in others.items():
                assert abs(_corr(state[k], other[k])) < 0.2, (level, k, what)
    a, b = reinits[1][0], reinits[2][0]
    assert all(abs(_corr(a[k], b[k])) < 0.2 for k, w in init.items() if w.dim() >= 2)


def test_branch_registry_entries_names_and_seeds(monkeypatch):
    # A branch is its function, options field and one-line help (the docstring's first line); a name is taken once.
    from lth_kernels.workflows.imp import branches as br

    def plain(runner, replicate, level, opts, out_dir):
        """A control without options.

        More text that is not the help."""

    monkeypatch.setattr(br, "BRANCHES", dict(br.BRANCHES))
    assert br.register_branch("plain_test")(plain) is plain
    assert br.BRANCHES["plain_test"] == br.Branch("plain_test", plain, None, "A control without options.")
    br.register_branch("bare_test", options="retrain")(lambda *a: None)
    assert br.BRANCHES["bare_test"].help == "" and br.BRANCHES["bare_test"].options == "retrain"
    with pytest.raises(ValueError, match=r"^name: branch 'plain_test' is already registered$"):
        br.register_branch("plain_test")(plain)
    hp = ImpHparams.from_preset()
    assert branch_dir_name(hp, "plain_test") == "plain_test"  # no options: never hashed
    changed = ImpHparams.from_preset(**{"retrain.training": {"lr": 0.05}})
    name = branch_dir_name(changed, "retrain")
    assert name == f"retrain-{changed.retrain.hashname(8)}" and len(name) == len("retrain-") + 8
    assert branch_dir_name(hp, "retrain") == "retrain"  # default options: the plain name
    # derived seeds are fixed by their definition (the first 8 bytes of sha256 over the ':'-joined parts, little
    # endian, 63 bits): a resumed or re-run branch must draw the same masks and inits
    assert br.derived_seed("random_prune", 0, 1, 0) == 1727916691085555504
    assert br.derived_seed("a") == 7304431660483791845 and br.derived_seed() == 724655455495936113
    assert br.derived_seed("a", 12) != br.derived_seed("a1", 2)
