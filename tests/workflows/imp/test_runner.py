"""``lth imp`` end to end on tiny budgets: layout and resume, exact per-level densities, exclusions,
rewinding, branches, structures, kill -9 during a level, torchrun with 2 gloo ranks, one-line errors."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lth_kernels.tickets import Ticket
from lth_kernels.training import Callback, Trainer
from lth_kernels.training.checkpoint import step_paths
from lth_kernels.workflows.imp.cli import main
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import ImpRunner, run_imp
from tests.workflows.imp.scripts.imp_tiny import run as run_tiny

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).parent / "scripts" / "imp_tiny.py"
PRUNABLE = ("fc_layers.0.weight", "fc_layers.1.weight")  # lenet_300_100; fc.weight is excluded by the model
FAST = {"training.training_steps": "1ep", "training.eval_every": "0it", "levels": 2}


def _fast(**overrides) -> ImpHparams:
    return ImpHparams.from_preset(**{**FAST, **overrides})


def _expected_kept(total: int, levels: int, fraction: float = 0.2) -> list[int]:
    """open_lth's counts: each level removes ceil(fraction * remaining)."""
    kept = [total]
    for _ in range(levels):
        kept.append(kept[-1] - math.ceil(round(fraction * kept[-1], 9)))
    return kept


def _final(stage: Path) -> dict:
    done = json.loads((stage / "done.json").read_text())
    return load_file(step_paths(stage, done["step"])[0])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default preset (lenet_300_100 on digits) with every branch, on a 1-epoch budget."""
    root = tmp_path_factory.mktemp("imp")
    hp = _fast(branches=("random_reinit", "random_prune", "retrain"),
               **{"retrain.training": {"lr": 0.05}, "random_prune.scope": "global"})
    return hp, run_imp(hp, root=root, progress=False)


def test_default_preset_end_to_end(default_run):
    hp, path = default_run
    assert path.name == f"imp-{hp.hashname()}" and (path / "hparams.json").exists()
    retrain_dir = next(p.name for p in (path / "replicate_0" / "level_1").iterdir() if p.name.startswith("retrain"))
    assert retrain_dir.startswith("retrain-")  # non-default options name the branch directory
    for level in range(3):
        stages = ["main"] + ([] if level == 0 else ["random_reinit", "random_prune-", retrain_dir])
        for stage in stages:
            d = next(p for p in (path / "replicate_0" / f"level_{level}").iterdir() if p.name.startswith(stage))
            for f in ("mask.safetensors", "sparsity_report.json", "metrics.jsonl", "done.json"):
                assert (d / f).exists(), d / f
            assert not (d / "checkpoint.pt").exists()
            assert set(_final(d)) >= {f"{n}" for n in PRUNABLE}
    summary = json.loads((path / "summary.json").read_text())
    assert summary["branches"][0] == "main" and len(summary["branches"]) == 4
    assert sorted(summary["levels"]) == ["0", "1", "2"]
    main0 = summary["levels"]["0"]["main"]
    assert main0["density"]["mean"] == 1.0 and main0["test_acc_end"]["mean"] > 0.7  # digits learns in 1 epoch
    for row in summary["levels"].values():
        for rec in row.values():
            assert rec["test_acc_best"]["mean"] >= rec["test_acc_end"]["mean"]
            assert rec["train_time_s"]["mean"] > 0 and rec["samples_per_s"]["mean"] > 0

    # a finished run is not re-run: nothing is trained or rewritten except the summary
    def stamps():
        return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file() and p.name != "summary.json"}

    before = stamps()
    assert run_imp(hp, root=path.parent, progress=False) == path
    assert stamps() == before


def test_densities_branch_masks_and_exclusions(default_run):
    hp, path = default_run
    total = sum(Ticket.load(path / "replicate_0/level_0/main/mask.safetensors")[n].numel() for n in PRUNABLE)
    expected = _expected_kept(total, 2)
    for level in range(3):
        ldir = path / "replicate_0" / f"level_{level}"
        ticket = Ticket.load(ldir / "main" / "mask.safetensors")
        assert sum(int(ticket[n].sum()) for n in PRUNABLE) == expected[level]
        assert abs(expected[level] / total - 0.8 ** level) < 1e-4
        report = json.loads((ldir / "main" / "sparsity_report.json").read_text())
        assert report["prunable"]["kept"] == expected[level] and report["excluded"] == ["fc.weight"]
        assert report == json.loads(json.dumps(ticket.report()))  # the file is Ticket.report(), nothing more
        assert ticket.prunable_density == pytest.approx(expected[level] / total)
        assert ticket.sparsity < ticket.prunable_sparsity or level == 0  # the excluded layer counts as kept
        assert set(report["layers"]) == {*PRUNABLE, "fc.weight"}
        assert bool(ticket["fc.weight"].all())  # the output layer is never pruned ...
        assert int((_final(ldir / "main")["fc.weight"] == 0).sum()) == 0  # ... and trains densely
        if level == 0:
            continue
        assert Ticket.load(ldir / "random_reinit" / "mask.safetensors").equal(ticket)
        retrain = next(ldir.glob("retrain-*"))
        assert Ticket.load(retrain / "mask.safetensors").equal(ticket)
        rp = Ticket.load(next(ldir.glob("random_prune-*")) / "mask.safetensors")
        assert not rp.equal(ticket) and bool(rp["fc.weight"].all())
        assert sum(int(rp[n].sum()) for n in PRUNABLE) == expected[level]  # global shuffle: the total is kept
        # masked weights stay exactly zero in every stage's final weights
        for stage in ("main", "random_reinit"):
            final, m = _final(ldir / stage), Ticket.load(ldir / stage / "mask.safetensors")
            assert all(int(final[n][~m[n]].ne(0).sum()) == 0 for n in PRUNABLE)
        reinit = _final(ldir / "random_reinit")
        assert not torch.equal(reinit["fc_layers.0.weight"], _final(ldir / "main")["fc_layers.0.weight"])


def test_layerwise_densities_and_user_exclusions(tmp_path):
    hp = _fast(**{"pruning.scope": "layerwise", "pruning.exclude": ("fc_layers.0.weight",), "levels": 2,
                  "training.training_steps": "3it", "branches": ("random_prune",)})
    path = run_imp(hp, root=tmp_path, progress=False)
    kept = _expected_kept(300 * 100, 2)
    for level in range(3):
        ldir = path / "replicate_0" / f"level_{level}"
        ticket = Ticket.load(ldir / "main" / "mask.safetensors")
        assert bool(ticket["fc_layers.0.weight"].all()) and bool(ticket["fc.weight"].all())
        assert int(ticket["fc_layers.1.weight"].sum()) == kept[level]
        report = json.loads((ldir / "main" / "sparsity_report.json").read_text())
        assert report["excluded"] == ["fc_layers.0.weight", "fc.weight"]
        if level:  # layerwise random pruning keeps every layer's count, and leaves excluded layers alone
            rp = Ticket.load(ldir / "random_prune" / "mask.safetensors")
            assert int(rp["fc_layers.1.weight"].sum()) == kept[level] and bool(rp["fc_layers.0.weight"].all())


class LrRecorder(Callback):
    def __init__(self):
        self.start, self.lrs, self.weights = {}, {}, {}

    def on_train_start(self, trainer, step):
        key = "/".join(trainer.out_dir.parts[-3:])
        self.start[key] = step
        self.lrs[key] = []
        self.weights[key] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self._key = key

    def on_after_optimizer_step(self, trainer, step):
        self.lrs[self._key].append(trainer.optimizer.param_groups[0]["lr"])


def test_rewinding_restores_weights_schedule_and_data_order(tmp_path):
    # plain SGD (the digits preset): pretrain to K then level 0 from K must equal one uninterrupted run
    hp = _fast(rewind="1ep5it", levels=1, **{"training.milestone_steps": "1ep10it", "training.warmup_steps": "7it",
                                            "training.training_steps": "2ep"})
    rec = LrRecorder()
    runner = ImpRunner(hp, root=tmp_path, callbacks=[rec], progress=False)
    path = runner.run()
    k = runner.rewind_step
    assert k == runner.steps_per_epoch + 5
    straight = runner.new_model(runner.training_for(0).seed)
    Trainer(straight, *runner.data[:2], runner.training_for(0), batch_size=hp.dataset.batch_size,
            progress=False).train()
    level0 = _final(path / "replicate_0/level_0/main")
    for name, value in straight.state_dict().items():
        assert torch.equal(value, level0[name]), name

    # a pruned level starts from θ_K ⊙ mask at step K with the same learning rates as level 0
    theta_k = load_file(step_paths(path / "replicate_0/pretrain", k)[0])
    mask = Ticket.load(path / "replicate_0/level_1/main/mask.safetensors")
    start = rec.weights["replicate_0/level_1/main"]
    for name, value in theta_k.items():
        expect = value * mask[name] if name in mask else value
        assert torch.equal(start[name], expect), name
    assert rec.start["replicate_0/level_1/main"] == rec.start["replicate_0/level_0/main"] == k
    assert rec.lrs["replicate_0/level_1/main"] == rec.lrs["replicate_0/level_0/main"]
    assert len(rec.lrs["replicate_0/level_0/main"]) == runner.end_step - k

    # retraining the dense ticket from the rewind point reproduces level 0 bit for bit
    model = runner.rewound_model(0)
    runner.train_stage(model, Ticket.ones(model), tmp_path / "dense_again", runner.training_for(0), k)
    again = _final(tmp_path / "dense_again")
    assert all(torch.equal(again[n], level0[n]) for n in level0)


@pytest.mark.parametrize("structure", ["block16", "2:4"])
def test_structures(tmp_path, structure):
    levels_run = 2
    hp = _fast(levels=levels_run, **{"pruning.structure": structure, "training.training_steps": "3it"})
    path = run_imp(hp, root=tmp_path, progress=False)
    levels = sorted(p.name for p in (path / "replicate_0").glob("level_*"))
    assert levels == (["level_0", "level_1"] if structure == "2:4" else [f"level_{i}" for i in range(levels_run + 1)])
    ticket = Ticket.load(path / "replicate_0/level_1/main/mask.safetensors")
    m0, m1 = ticket["fc_layers.0.weight"], ticket["fc_layers.1.weight"]  # [300, 64], [100, 300]
    if structure == "2:4":
        assert bool((m0.reshape(300, 16, 4).sum(-1) == 2).all()) and bool((m1.reshape(100, 75, 4).sum(-1) == 2).all())
    else:
        # 300 and 100 rows are no multiples of 16 (partial edge blocks): each level still removes 20 % of the
        # remaining prunable weights (overshooting by less than one 256-weight block); no layer is emptied.
        # (Global ranking: the 300->100 layer's smaller weights go first, as for unstructured magnitude.)
        total = m0.numel() + m1.numel()
        kept = [total]
        for level in range(1, levels_run + 1):
            t = Ticket.load(path / f"replicate_0/level_{level}/main/mask.safetensors")
            now = int(t["fc_layers.0.weight"].sum()) + int(t["fc_layers.1.weight"].sum())
            need = math.ceil(0.2 * kept[-1])
            assert kept[-1] - need - 256 < now <= kept[-1] - need, (level, now, kept)
            assert all(int(t[n].sum()) > 0 for n in ("fc_layers.0.weight", "fc_layers.1.weight"))
            padded = torch.nn.functional.pad(t["fc_layers.1.weight"].int(), (0, 4, 0, 12))
            blocks = padded.reshape(7, 16, 19, 16).sum(dim=(1, 3))
            assert bool(((blocks == 0) | (blocks == 256) | (blocks == 16 * 12) | (blocks == 4 * 16)
                         | (blocks == 4 * 12)).all())  # whole blocks, edge blocks 4 rows / 12 columns
            kept.append(now)
    assert bool(ticket["fc.weight"].all())


def test_kill9_during_level2_then_rerun_gives_the_same_masks(tmp_path):
    ref = run_tiny(tmp_path / "ref")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "run"), "0.02"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    target = tmp_path / "run" / ref.name / "replicate_0" / "level_2" / "main" / "checkpoint.pt"
    deadline = time.time() + 240
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.4))  # somewhere in level 2's later epochs (each is ~0.5 s)
    assert proc.poll() is None, "the run finished level 2 before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    level2 = target.parent
    assert not (level2 / "done.json").exists() and (level2 / "mask.safetensors").exists()

    resumed = run_tiny(tmp_path / "run")
    for level in range(4):
        rel = f"replicate_0/level_{level}/main"
        assert Ticket.load(resumed / rel / "mask.safetensors").equal(Ticket.load(ref / rel / "mask.safetensors"))
        a, b = _final(resumed / rel), _final(ref / rel)
        assert all(torch.equal(a[n], b[n]) for n in a), level


@pytest.mark.torchrun
def test_torchrun_two_ranks_same_masks_as_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [torch.load(tmp_path / "ddp" / f"masks_rank{r}.pt") for r in (0, 1)]
    assert sorted(ranks[0]) == [f"level_{i}/main" for i in range(4)] and ranks[0].keys() == ranks[1].keys()
    single = run_tiny(tmp_path / "single")
    ddp = tmp_path / "ddp" / single.name
    for stage, masks in ranks[0].items():
        assert all(torch.equal(masks[n], ranks[1][stage][n]) for n in masks), stage  # both ranks trained alike
        rel = f"replicate_0/{stage}/mask.safetensors"
        on_disk = Ticket.load(ddp / rel)
        assert on_disk.equal({n: m for n, m in masks.items()}), stage  # what rank 0 wrote is what they used
        assert on_disk.equal(Ticket.load(single / rel)), stage  # ... and what one process decides
    assert Ticket.load(ddp / "replicate_0/level_3/main/mask.safetensors").density < 0.6


@pytest.mark.parametrize("args,flag", [
    (["--pruning.fraction", "0"], "--pruning.fraction"),
    (["--fraction", "1.5"], "--pruning.fraction"),
    (["--preset", "nope"], "--preset"),
    (["--rewind", "100ep"], "--rewind"),
    (["--rewind", "soon"], "--rewind"),
    (["--branches", "random_reinit,nope"], "--branches"),
    (["--structure", "channel"], "--pruning.structure"),
    (["--levels", "-1"], "--levels"),
    (["--target_density", "1.5"], "--target_density"),
    (["--retrain.training", "lr=-1"], "--retrain.training"),
    (["--threads", "0"], "--threads"),
])
def test_bad_hparams_give_one_line_errors(tmp_path, capsys, args, flag):
    code = 0
    try:
        code = main([*args, "--root", str(tmp_path), "--quiet"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"lth imp: error: {flag}"), err[0]
    assert not any(tmp_path.iterdir())  # nothing was started


def test_target_density_sets_levels_and_job_fields_keep_the_run_name():
    hp = _fast(target_density=0.05)
    assert hp.num_levels == 14 and 0.8 ** 14 < 0.05 < 0.8 ** 13
    assert _fast(levels=9, replicates=3, branches=("random_reinit",)).hashname() == _fast().hashname()
    assert _fast(**{"training.lr": 0.05}).hashname() != _fast().hashname()
    assert ImpHparams().hashname() == ImpHparams.from_preset("lenet_300_100-digits").hashname()


def test_auto_threads_use_one_cpu_thread_for_small_models(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ImpRunner(_fast(), root=tmp_path, threads="auto", device="cpu")
        assert torch.get_num_threads() == 1  # lenet_300_100 on 8x8 digits: 50,610 parameters
        ImpRunner(_fast(), root=tmp_path, threads=None, device="cpu")
        assert torch.get_num_threads() == 1  # None leaves the setting alone
    finally:
        torch.set_num_threads(threads)
