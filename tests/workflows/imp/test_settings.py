"""``lth imp`` settings around the core: per layer-group fractions, the presets' paper settings, run names that
survive moving the data, and runs named by earlier versions resuming."""

import json
import math
import shutil

import pytest

from lth_kernels.cli import main as lth
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import run_imp

FAST = {"training.training_steps": "3it", "training.eval_every": "0it", "levels": 2}


def _count(total: int, levels: int, f: float) -> int:
    for _ in range(levels):
        total -= math.ceil(round(f * total, 9))
    return total


def test_fraction_by_prunes_each_group_at_its_rate(tmp_path):
    hp = ImpHparams.from_preset(**FAST, branches=("random_prune",), **{
        "pruning.fraction_by": {"fc_layers.*": 0.2, "fc.weight": 0.1}})
    path = run_imp(hp, root=tmp_path, progress=False)
    totals = {"fc_layers.0.weight": 64 * 300, "fc_layers.1.weight": 300 * 100, "fc.weight": 100 * 10}
    for level in (1, 2):
        rep = json.loads((path / f"replicate_0/level_{level}/main/sparsity_report.json").read_text())
        layers = {n: v["kept"] for n, v in rep["layers"].items()}
        assert layers == {n: _count(t, level, 0.1 if n == "fc.weight" else 0.2) for n, t in totals.items()}
        assert rep["prunable"]["names"] == list(totals)  # the output layer counts as prunable now
        assert rep["prunable"]["kept"] == sum(layers.values())
        # random_prune keeps every layer's count, the output layer's included (it is shuffled too)
        shuffled = json.loads((path / f"replicate_0/level_{level}/random_prune/sparsity_report.json").read_text())
        assert {n: v["kept"] for n, v in shuffled["layers"].items()} == layers


def test_conv4_dry_run_shows_the_papers_rates_and_validation(capsys):
    assert lth(["imp", "--preset", "conv4-cifar10", "--dry-run"]) == 0
    hp = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert hp["pruning"]["fraction_by"] == {"convs.*": 0.1, "fc_layers.*": 0.2, "fc.weight": 0.1}
    assert hp["dataset"]["validation"] == 5000 and hp["training"]["training_steps"] == "25000it"
    for preset in ("lenet_300_100-mnist", "cifar_resnet_20-cifar10", "cifar_vgg_16-cifar10"):
        assert ImpHparams.from_preset(preset).dataset.validation == 5000  # file-based: select on a hold-out
    assert ImpHparams.from_preset().dataset.validation == 0  # digits: the README's numbers


@pytest.mark.parametrize("bad", [{"pruning.fraction_by": {"fc*": 1.0}},
                                 {"pruning.fraction_by": {"fc*": 0.1}, "pruning.structure": "2:4"},
                                 {"pruning.fraction_by": {"fc*": 0.1}, "target_density": 0.1}])
def test_bad_fraction_by_is_a_one_line_error(bad):
    with pytest.raises(HparamsError, match=r"^--pruning\.fraction_by: "):
        ImpHparams.from_preset(**bad)


def test_moving_the_data_keeps_the_run_and_old_names_still_resume(tmp_path):
    hp = ImpHparams.from_preset(**FAST)
    path = run_imp(hp, root=tmp_path, progress=False)
    moved = hp.with_overrides({"dataset.data_dir": str(tmp_path / "elsewhere"), "training.eval_every": "1it"})
    assert run_imp(moved, root=tmp_path, progress=False) == path  # same name, everything done before
    # A run made by a version whose names hashed eval_every too is found under its old name and resumed.
    old = tmp_path / f"imp-{hp.legacy_hashname()}"
    assert old != path
    shutil.move(path, old)
    (old / "replicate_0/level_2/main/done.json").unlink()  # killed in the last level
    assert run_imp(hp, root=tmp_path, progress=False) == old
    assert (old / "replicate_0/level_2/main/done.json").exists() and not path.exists()


def test_resnet50_preset_uses_open_lths_crop(capsys):
    assert lth(["imp", "--preset", "resnet50-imagenet", "--dry-run"]) == 0
    hp = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert hp["dataset"]["crop_scale"] == "0.1,1" and hp["dataset"]["interpolation"] == "bilinear"
    assert "crop_scale" not in json.dumps(ImpHparams.from_preset("cifar_resnet_20-cifar10").non_default())
