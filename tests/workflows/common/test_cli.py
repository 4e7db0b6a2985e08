"""The shared CLI frame of the run-directory workflows (``workflows/common/cli.py``)."""

import json

import pytest

from lth_kernels.workflows import early_bird, gfs, jackpot
from lth_kernels.workflows.common.cli import expand_aliases, expand_switches, workflow_main


def test_aliases_and_switches_expand():
    assert expand_aliases(["--scope=layerwise", "--scope", "x", "--other"], {"--scope": "--pruning.scope"}) == [
        "--pruning.scope=layerwise", "--pruning.scope", "x", "--other"]
    assert expand_switches(["--a", "--budget-study", "--b"], {"--budget-study": "--gfs.budget_study"}) == [
        "--a", "--gfs.budget_study", "true", "--b"]


@pytest.mark.parametrize("module,flag,key", [(gfs, "--budget-study", ("gfs", "budget_study")),
                                             (jackpot, "--random-weights", ("source", "random_weights"))])
def test_switches_name_the_run(module, flag, key, capsys, tmp_path):
    assert module.main(["--root", str(tmp_path), "--dry-run"]) == 0
    plain_dir, plain_hp = capsys.readouterr().out.split("\n", 1)
    assert module.main(["--root", str(tmp_path), flag, "--dry-run"]) == 0
    switched_dir, switched_hp = capsys.readouterr().out.split("\n", 1)
    assert json.loads(switched_hp)[key[0]][key[1]] is True and json.loads(plain_hp)[key[0]][key[1]] is False
    assert switched_dir != plain_dir and not any(tmp_path.iterdir())  # a dry run writes nothing


def test_default_preset_and_user_errors_are_one_line(capsys, tmp_path):
    seen = {}

    def run(hp, ns):
        seen["hp"], seen["root"] = hp, ns.root
        raise ValueError("--early_bird.ratios: no ticket can be drawn from this, got 0.999")

    code = workflow_main(early_bird.EarlyBirdHparams, ["--root", str(tmp_path), "--quiet"], workflow="early-bird",
                         prog="lth early-bird", description="test", default_preset="mlp-digits", run=run)
    assert code == 2 and seen["root"] == str(tmp_path)
    assert seen["hp"] == early_bird.EarlyBirdHparams()  # the default preset is the class defaults
    err = capsys.readouterr().err.strip()
    assert err == "lth early-bird: error: --early_bird.ratios: no ticket can be drawn from this, got 0.999"


def test_bugs_keep_their_traceback(tmp_path):
    def run(hp, ns):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        workflow_main(early_bird.EarlyBirdHparams, ["--root", str(tmp_path)], workflow="early-bird",
                      prog="lth early-bird", description="test", default_preset="mlp-digits", run=run)


@pytest.mark.parametrize("spelled", [["--target-density", "0.3"], ["--target_density=0.3"], ["--target-density=0.3"]])
def test_both_spellings_give_the_same_run(spelled, capsys, tmp_path):
    from lth_kernels.workflows import imp

    assert imp.main(["--root", str(tmp_path), "--target_density", "0.3", "--dry-run"]) == 0
    want = capsys.readouterr().out
    assert imp.main(["--root", str(tmp_path), *spelled, "--dry_run"]) == 0
    assert capsys.readouterr().out == want and json.loads(want.split("\n", 1)[1])["target_density"] == 0.3
    # job flags and switches too; values keep their dashes
    assert gfs.main(["--root", str(tmp_path), "--budget_study", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["gfs"]["budget_study"] is True


@pytest.mark.parametrize("module,shown", [(gfs, ["--budget-study = --gfs.budget_study true"]),
                                          (jackpot, ["--random-weights = --source.random_weights true"])])
def test_help_lists_every_alias_and_switch(module, shown, capsys):
    from lth_kernels.workflows import imp

    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for s in [*shown, "written with - or _"]:
        assert s in text, s
    with pytest.raises(SystemExit):
        imp.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"--{a} = --pruning.{a}" in text for a in ("structure", "fraction", "scope", "exclude"))
