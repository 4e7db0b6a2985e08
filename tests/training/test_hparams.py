import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lth_kernels.training.hparams.base import Hparams, HparamsError, hfield
from lth_kernels.training.hparams.cli import parse_cli, presets, register_preset
from lth_kernels.training.hparams.groups import DatasetHparams, ModelHparams, PruningHparams, TrainingHparams

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunHparams(Hparams):
    """A workflow's hparams for the tests."""

    dataset: DatasetHparams = hfield(default_factory=DatasetHparams)
    model: ModelHparams = hfield(default_factory=ModelHparams)
    training: TrainingHparams = hfield(default_factory=TrainingHparams)
    pruning: PruningHparams = hfield(default_factory=PruningHparams)
    levels: int = hfield(3, "pruning levels")


register_preset("test_wf", "big", {"model.name": "cifar_resnet_20",
                                   "training": {"lr": 0.4, "milestone_steps": "80ep,120ep", "training_steps": "160ep"}})


def test_json_round_trip():
    hp = RunHparams(
        dataset=DatasetHparams(data_dir="/data", batch_size=64),
        model=ModelHparams(name="x", kwargs={"width": 2, "act": "relu"}),
        training=TrainingHparams(optimizer="adamw", lr=1e-3, nesterov=False, milestone_steps="1ep,2ep"),
        pruning=PruningHparams(exclude=("fc.weight", "a.weight"), structure="2:4"),
        levels=5,
    )
    text = hp.to_json()
    assert json.loads(text)["pruning"]["exclude"] == ["fc.weight", "a.weight"]
    back = RunHparams.from_json(text)
    assert back == hp and back.hashname() == hp.hashname()
    assert isinstance(back.pruning.exclude, tuple)


def test_from_dict_is_strict_and_names_the_key():
    with pytest.raises(HparamsError, match=r"^--training\.lrr: unknown hparam"):
        RunHparams.from_dict({"training": {"lrr": 0.1}})
    with pytest.raises(HparamsError, match=r"^--training\.lr: expected float, got 'x'"):
        RunHparams.from_dict({"training": {"lr": "x"}})
    with pytest.raises(HparamsError, match=r"^--training\.momentum: must be in"):
        RunHparams.from_dict({"training": {"momentum": 1.5}})


def test_non_default_and_hash():
    base = RunHparams()
    assert base.non_default() == {}
    a = RunHparams.from_dict({"training": {"lr": 0.05, "seed": 3}, "levels": 4})
    b = RunHparams.from_dict({"levels": 4, "training": {"seed": 3, "lr": 0.05}})  # other key order
    c = a.with_overrides({"training.lr": 0.05})  # no change
    assert a.non_default() == {"training.lr": 0.05, "training.seed": 3, "levels": 4}
    assert a.hashname() == b.hashname() == c.hashname()
    # ints and floats coerce: 1 and 1.0 name the same run; explicit defaults do not change the name
    assert RunHparams.from_dict({"training": {"lr": 1}}).hashname() == RunHparams.from_dict(
        {"training": {"lr": 1.0}}).hashname()
    assert RunHparams.from_dict({"training": {"lr": 0.1}}).hashname() == base.hashname()
    assert a.hashname() != base.hashname() and len(a.hashname()) == 10
    d = RunHparams.from_dict({"model": {"kwargs": {"b": 1, "a": 2}}})
    e = RunHparams.from_dict({"model": {"kwargs": {"a": 2, "b": 1}}})
    assert d.hashname() == e.hashname()
    # pinned: the hash must not depend on the process (PYTHONHASHSEED) or change between versions, since
    # changing it renames every run directory
    assert RunHparams.from_dict({"training": {"lr": 0.05}}).hashname() == "410f3b9ee4"


def test_cli_flags_and_values():
    hp, ns = parse_cli(RunHparams, [
        "--training.lr", "0.05", "--training.optimizer", "adam", "--dataset.augment", "false", "--dataset.download",
        "--model.kwargs", "width=2,name=wide,drop=0.1", "--pruning.exclude", "fc.weight,conv1.weight",
        "--dataset.data_dir", "none", "--levels", "7"], workflow="test_wf")
    assert hp.training.lr == 0.05 and hp.training.optimizer == "adam"
    assert hp.dataset.augment is False and hp.dataset.download is True and hp.dataset.data_dir is None
    assert hp.model.kwargs == {"width": 2, "name": "wide", "drop": 0.1}
    assert hp.pruning.exclude == ("fc.weight", "conv1.weight") and hp.levels == 7
    hp2, _ = parse_cli(RunHparams, ["--model.kwargs", '{"width": 2}'], workflow="test_wf")
    assert hp2.model.kwargs == {"width": 2}


def test_presets_then_flags():
    assert "big" in presets("test_wf")
    hp, ns = parse_cli(RunHparams, ["--preset", "big", "--training.lr", "0.2"], workflow="test_wf")
    assert ns.preset == "big"
    assert hp.model.name == "cifar_resnet_20" and hp.training.training_steps == "160ep"
    assert hp.training.lr == 0.2  # the flag wins over the preset
    # the name depends on the resolved values only, not on how they were given
    same = RunHparams.from_dict({"model": {"name": "cifar_resnet_20"}, "training": {
        "lr": 0.2, "milestone_steps": "80ep,120ep", "training_steps": "160ep"}})
    assert hp.hashname() == same.hashname()
    with pytest.raises(ValueError, match="already registered"):
        register_preset("test_wf", "big", {"training.lr": 9.0})


def _cli(capsys, *args):
    """Run the generated CLI in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        parse_cli(RunHparams, list(args), workflow="test_wf", prog="lth test")
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_shows_effective_values(capsys):
    code, out, _ = _cli(capsys, "--preset", "big", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--training.lr FLOAT peak learning rate [0.4]" in text  # preset value, not the default 0.1
    assert "[cifar_resnet_20]" in text and "[80ep,120ep]" in text
    assert "peak learning rate [0.1]" in " ".join(_cli(capsys, "--help")[1].split())


@pytest.mark.parametrize("args,flag", [
    (["--training.lr", "abc"], "--training.lr"),
    (["--training.training_steps", "5x"], "--training.training_steps"),
    (["--training.optimizer", "rmsprop"], "--training.optimizer"),
    (["--training.milestone_steps", "80ep,oops"], "--training.milestone_steps"),
    (["--dataset.augment", "maybe"], "--dataset.augment"),
    (["--dataset.batch_size", "0"], "--dataset.batch_size"),
    (["--training.nesterov", "--training.optimizer", "adam"], "--training.nesterov"),
    (["--model.kwargs", "{bad json"], "--model.kwargs"),
    (["--preset", "nope"], "--preset"),
])
def test_bad_values_give_one_line_errors_naming_the_flag(capsys, args, flag):
    code, _, err = _cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (args, err)
    assert lines[0].startswith(f"lth test: error: {flag}:"), lines[0]


def test_hparams_module_does_not_import_torch():
    # Load the package skeleton without lth_kernels/__init__.py (which imports the ops, hence torch).
    code = "\n".join([
        "import sys, types",
        "for name, path in [('lth_kernels', 'lth_kernels'), ('lth_kernels.training', 'lth_kernels/training')]:",
        "    m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m",
        "import lth_kernels.training.hparams",
        "print('torch' in sys.modules)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_pruning_and_training_validation():
    with pytest.raises(HparamsError, match="--structure"):
        PruningHparams(structure="blocky")
    assert PruningHparams(structure="block32x32").structure == "block32x32"
    with pytest.raises(HparamsError, match="--training_steps: must be more than zero"):
        TrainingHparams(training_steps="0ep")
    with pytest.raises(HparamsError, match="--scope: expected one of global, layerwise"):
        PruningHparams(scope="local")


def test_data_pipeline_fields_keep_old_run_names():
    from lth_kernels.workflows.imp import ImpHparams

    # The embedded preset keeps its name from before --dataset.pipeline/num_workers and --training.compile existed
    # (the file-based presets were renamed on purpose when they gained a validation hold-out).
    assert ImpHparams.from_preset("lenet_300_100-digits").hashname() == "99914b932b"
    for preset in ("lenet_300_100-mnist", "cifar_resnet_20-cifar10", "lenet_300_100-digits"):
        hp = ImpHparams.from_preset(preset)
        name = hp.hashname()
        # Worker processes do not change what is computed: the same run, resumable with any count.
        assert hp.with_overrides({"dataset.num_workers": "3"}).hashname() == name
        assert hp.with_overrides({"dataset.pipeline": "loader"}).hashname() != name
        assert hp.with_overrides({"training.compile": True}).hashname() != name
    with pytest.raises(HparamsError, match=r"^--dataset.num_workers: expected 'auto' or an int >= 0, got 'many'$"):
        ImpHparams.from_preset("lenet_300_100-mnist", **{"dataset.num_workers": "many"})
    with pytest.raises(HparamsError, match=r"^--dataset.pipeline: expected one of auto, device, loader"):
        ImpHparams.from_preset("lenet_300_100-mnist", **{"dataset.pipeline": "gpu"})
