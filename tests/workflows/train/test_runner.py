"""``lth train`` and IMP's --init.weights / --init.ticket: one run under the run rules, started from given files."""

import json
import math

import torch
from safetensors.torch import load_file

from lth_kernels.cli import main as lth
from lth_kernels.tickets import Ticket, prune
from lth_kernels.training.checkpoint import save_weights, step_paths
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import ImpRunner
from lth_kernels.workflows.train.hparams import TrainHparams

FAST = ["--training.training_steps", "3it", "--training.eval_every", "0it"]


def _given(tmp_path):
    """A weight file and a 50 % random ticket for lenet_300_100 on digits."""
    runner = ImpRunner(ImpHparams.from_preset(levels=0), tmp_path / "scratch", progress=False)
    model = runner.new_model(123)
    save_weights(model, tmp_path / "w.safetensors")
    ticket = prune(model, "random", 0.5, generator=torch.Generator().manual_seed(0))
    ticket.save(tmp_path / "t.safetensors")
    return model, ticket


def test_lth_train_masked_from_given_weights(tmp_path, capsys):
    model, ticket = _given(tmp_path)
    args = [*FAST, "--root", str(tmp_path), "--init.weights", str(tmp_path / "w.safetensors"),
            "--init.ticket", str(tmp_path / "t.safetensors")]
    assert lth(["train", *args]) == 0
    out = capsys.readouterr().out
    hp = TrainHparams().with_overrides({"training.training_steps": "3it", "training.eval_every": "0it",
                                     "init.weights": str(tmp_path / "w.safetensors"),
                                     "init.ticket": str(tmp_path / "t.safetensors")})
    run = tmp_path / f"train-{hp.hashname()}"
    assert out.startswith(run.name) and len(out.splitlines()) == 5  # title, note, head, rule, one row
    stage = run / "replicate_0/level_0/main"
    mine = Ticket.load(stage / "mask.safetensors")
    assert all(torch.equal(mine[n], ticket[n]) for n in ticket)
    theta0 = load_file(step_paths(run / "replicate_0/pretrain", 0)[0])
    assert all(torch.equal(theta0[k], v) for k, v in model.state_dict().items())  # θ₀ is the given weights
    final = _final(stage)
    assert all(int((final[n] != 0)[~ticket[n]].sum()) == 0 for n in ticket)  # trained under the mask
    assert json.loads((stage / "done.json").read_text())["step"] == 3
    stamp = (stage / "done.json").stat().st_mtime_ns
    assert lth(["train", *args]) == 0  # rerun: nothing trains
    assert (stage / "done.json").stat().st_mtime_ns == stamp
    assert not (run / "replicate_0/level_1").exists()


def _final(stage):
    done = json.loads((stage / "done.json").read_text())
    return load_file(step_paths(stage, done["step"])[0])


def test_imp_from_a_given_ticket_prunes_it_further(tmp_path):
    _, ticket = _given(tmp_path)
    hp = ImpHparams.from_preset(levels=1, **{"training.training_steps": "3it", "training.eval_every": "0it",
                                             "init.ticket": str(tmp_path / "t.safetensors")})
    runner = ImpRunner(hp, tmp_path, progress=False)
    runner.run()
    level0, level1 = (runner.main_ticket(0, lvl) for lvl in (0, 1))
    prunable = ("fc_layers.0.weight", "fc_layers.1.weight")
    assert all(torch.equal(level0[n], ticket[n]) for n in ticket)
    kept0 = sum(int(level0[n].sum()) for n in prunable)
    assert sum(int(level1[n].sum()) for n in prunable) == kept0 - math.ceil(round(0.2 * kept0, 9))
    assert all(not bool((level1[n] & ~level0[n]).any()) for n in ticket)  # pruned further, nothing revived


def test_a_ticket_that_does_not_fit_is_a_one_line_error(tmp_path, capsys):
    Ticket({"fc.weight": torch.ones(3, 3, dtype=torch.bool)}).save(tmp_path / "bad.safetensors")
    assert lth(["train", *FAST, "--root", str(tmp_path), "--init.ticket", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lth train: error: ") and "fc.weight" in err[0]
