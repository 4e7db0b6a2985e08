"""A failed start of any workflow: a non-zero exit, one line on stderr naming the flag and the value, and
nothing left behind (no run directory, no temp file, no partial output)."""

from __future__ import annotations

import importlib

import pytest

from lth_kernels.workflows import WORKFLOWS

# flags every workflow takes (its dataset / model / training groups), each invalid in its own way:
# (argv, the flag the message must name, a piece of the offending value)
COMMON = [
    (["--dataset.name", "nope"], "--dataset.name", "nope"),  # unknown name
    (["--dataset.name", "mnist", "--dataset.data_dir", "{tmp}/no_such_dir"], "--dataset.data_dir", "no_such_dir"),
    (["--dataset.batch_size", "0"], "--dataset.batch_size", "0"),  # range
    (["--model.name", "nope_net"], "--model.name", "nope_net"),
    (["--model.kwargs", "{{bad json"], "--model.kwargs", "bad"),  # malformed mapping
    (["--preset", "nope"], "--preset", "nope"),
]
# the training group has a workflow-specific prefix
TRAINING = {"imp": "training", "train": "training", "early-bird": "training", "gfs": "training",
            "elastic": "imp.training",
            "jackpot": "pretrain", "data-ticket": "training"}
DATASET = {"elastic": "imp.dataset"}
MODEL = {"elastic": "imp.model"}

SPECIFIC = {
    "imp": [
        (["--levels", "-1"], "--levels", "-1"),
        (["--pruning.fraction", "1.5"], "--pruning.fraction", "1.5"),
        (["--branches", "random_reinit,nope"], "--branches", "nope"),
        (["--rewind", "3xyz"], "--rewind", "3xyz"),
        (["--pruning.structure", "block0"], "--pruning.structure", "block0"),
        (["--rewind", "400ep"], "--rewind", "400ep"),  # valid syntax, past the end of training
        (["--threads", "zero"], "--threads", "zero"),
        (["--init.weights", "{tmp}/no_such_weights.safetensors"], "--init.weights", "no_such_weights"),
        (["--init.ticket", "{tmp}/no_such_ticket.safetensors"], "--init.ticket", "no_such_ticket"),
    ],
    "train": [
        (["--replicates", "0"], "--replicates", "0"),
        (["--init.weights", "{tmp}/no_such_weights.safetensors"], "--init.weights", "no_such_weights"),
        (["--init.ticket", "{tmp}/no_such_ticket.safetensors"], "--init.ticket", "no_such_ticket"),
    ],
    "early-bird": [
        (["--early_bird.ratios", "0.3,1.2"], "--early_bird.ratios", "1.2"),
        (["--early_bird.queue", "1"], "--early_bird.queue", "1"),
        (["--early_bird.retrain", "eb_train,nope"], "--early_bird.retrain", "nope"),
        (["--early_bird.structure", "diagonal"], "--early_bird.structure", "diagonal"),
    ],
    "gfs": [
        (["--gfs.candidates", "0"], "--gfs.candidates", "0"),
        (["--gfs.tolerance", "-0.5"], "--gfs.tolerance", "-0.5"),
        (["--gfs.finetune_steps", "5 epochs"], "--gfs.finetune_steps", "5 epochs"),
        (["--gfs.budget_study", "true", "--gfs.train_sizes", "100,abc"], "--gfs.train_sizes", "abc"),
    ],
    "elastic": [
        (["--pairs", "4:x"], "--pairs", "4:x"),
        (["--strategy", "sideways"], "--strategy", "sideways"),
        (["--imp_runs", "4={tmp}/no_such_run"], "--imp_runs", "no_such_run"),
        (["--imp_runs", "four"], "--imp_runs", "four"),
    ],
    "jackpot": [
        (["--source.weights", "{tmp}/no_such_file.safetensors"], "--source.weights", "no_such_file"),
        (["--search.sparsities", "0.5,1.5"], "--search.sparsities", "1.5"),
        (["--search.rule", "nope"], "--search.rule", "nope"),
        (["--search.rho", "-1"], "--search.rho", "-1"),
    ],
    "data-ticket": [
        (["--keep_rate", "0.5,1.5"], "--keep_rate", "1.5"),
        (["--students", "ticket,nope"], "--students", "nope"),
        (["--selector.source", "checkpoint", "--selector.checkpoint", "{tmp}/no_such.pt"],
         "--selector.checkpoint", "no_such"),
        (["--selector.drop_blocks", "1,x"], "--selector.drop_blocks", "x"),
    ],
}


def _prefixed(workflow: str, argv: list[str], flag: str) -> tuple[list[str], str]:
    groups = {"--training.": TRAINING[workflow], "--dataset.": DATASET.get(workflow, "dataset"),
              "--model.": MODEL.get(workflow, "model")}
    for old, new in groups.items():
        argv = [a.replace(old, f"--{new}.") for a in argv]
        flag = flag.replace(old, f"--{new}.")
    return argv, flag


def cases():
    for command in WORKFLOWS:
        rows = [*COMMON, (["--training.lr", "-1"], "--training.lr", "-1"),
                (["--training.training_steps", "3xx"], "--training.training_steps", "3xx"),
                (["--training.milestone_steps", "1ep,,x"], "--training.milestone_steps", "x"),
                *SPECIFIC[command]]
        for argv, flag, value in rows:
            argv, flag = _prefixed(command, argv, flag)
            yield pytest.param(command, argv, flag, value, id=f"{command}:{' '.join(argv)}")


def _entries(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command,argv,flag,value", list(cases()))
def test_bad_start_is_one_line_and_leaves_nothing(command, argv, flag, value, tmp_path, capsys, monkeypatch):
    root, cwd = tmp_path / "runs", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written relative to the working directory is seen too
    argv = [a.format(tmp=tmp_path) for a in argv]
    main = importlib.import_module(WORKFLOWS[command].package).main
    try:
        rc = main([*argv, "--root", str(root), "--quiet"])
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc not in (0, None), f"lth {command} {' '.join(argv)} started"
    lines = err.splitlines()
    assert len(lines) == 1 or (len(lines) > 1 and lines[0].startswith("usage:") and len(lines[-1]) > 0), err
    last = lines[-1]
    assert flag in last and value in last, f"expected {flag} and {value!r} in: {last}"
    assert not root.exists() or _entries(root) == [], _entries(root)
    assert _entries(cwd) == []
