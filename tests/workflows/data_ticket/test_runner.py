"""``lth data-ticket``: selector scoring, stage composition, baselines, sparse eval, export, end to end, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lth_kernels.models import create_model
from lth_kernels.nn import ticketize_vit
from lth_kernels.training import Trainer
from lth_kernels.training.checkpoint import step_paths
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows import data_ticket
from lth_kernels.workflows.data_ticket.hparams import DataTicketHparams
from lth_kernels.workflows.data_ticket.report import export_tickets, load_tickets, select_dataset
from lth_kernels.workflows.data_ticket.selector import PatchSelector, cls_attention_topk, compose_stage_indices
from lth_kernels.workflows.data_ticket.sizes import default_drop_blocks, parse_drop_blocks, stage_counts
from lth_kernels.workflows.data_ticket.students import (
    AllPatches,
    FixedRandomPatches,
    RandomPatches,
    SelectorPatches,
    StepClock,
    TicketStudent,
    compact_tile,
    zero_fill,
)


def _vit(**kw):
    args = {"patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2, **kw}
    return create_model("vit_tiny", num_classes=10, in_chans=1, img_size=(8, 8), **args)


def _intensity_vit() -> nn.Module:
    """A 4x4-patch ViT whose CLS attention ranks patches by their pixel sum and whose blocks leave the
    tokens unchanged: q_cls . k_j = pixel sum of patch j (scaled), attention proj and MLP output are zero."""
    vit = _vit(embed_dim=4, num_heads=1, depth=2)
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        vit.patch_embed.proj.weight[1] = 1.0  # channel 1 = sum of the patch's pixels
        vit.cls_token[0, 0, 0] = 1.0  # channel 0 of CLS = 1
        for blk in vit.blocks:
            blk.norm1 = nn.Identity()  # keep the raw values (LayerNorm would flatten them)
            blk.attn.qkv.weight[0, 0] = 1.0  # q_0 = x_0 (1 for CLS)
            blk.attn.qkv.weight[4, 1] = 1.0  # k_0 = x_1 (pixel sum)
    return vit


# ------------------------------------------------------------------------------------------------ sizes


def test_stage_counts_match_the_reference_table():
    table = {0.95: [187, 178, 170], 0.9: [177, 160, 144], 0.85: [167, 142, 121], 0.8: [157, 126, 101],
             0.75: [147, 111, 84], 0.7: [138, 97, 68]}
    for r, counts in table.items():
        assert stage_counts(196, r, 3) == counts
    assert stage_counts(16, 0.75, 3) == [12, 9, 7]
    assert stage_counts(16, 0.5, 3) == [8, 4, 2]
    assert stage_counts(16, 1.0, 3) == [16, 16, 16]


def test_drop_blocks_scale_with_depth():
    assert default_drop_blocks(12) == (3, 6, 9)
    assert default_drop_blocks(4) == (1, 2, 3)
    assert default_drop_blocks(24) == (6, 12, 18)
    assert parse_drop_blocks("", 12) == (3, 6, 9)
    assert parse_drop_blocks("2,5", 12) == (2, 5)
    for bad in ("5,3", "12", "a", "1,1"):
        with pytest.raises(ValueError, match="drop_blocks"):
            parse_drop_blocks(bad, 12)


# ------------------------------------------------------------------------------------------------ selection


def test_cls_attention_topk_hand_computed():
    attn = torch.zeros(1, 2, 5, 5)
    attn[0, 0, 0] = torch.tensor([0.0, 0.1, 0.4, 0.2, 0.3])  # head 0: CLS row (CLS, p0..p3)
    attn[0, 1, 0] = torch.tensor([0.0, 0.3, 0.2, 0.1, 0.4])  # head 1
    score, idx = cls_attention_topk(attn, 2)
    torch.testing.assert_close(score, torch.tensor([[0.2, 0.3, 0.15, 0.35]]))
    assert idx.tolist() == [[3, 1]]  # largest mean first


def test_selector_keeps_the_top_cls_attention_patches():
    vit = _intensity_vit()
    sums = torch.tensor([[3., 14, 1, 9, 12, 0, 7, 5, 15, 2, 11, 6, 8, 13, 4, 10],
                         [15., 0, 14, 1, 13, 2, 12, 3, 11, 4, 10, 5, 9, 6, 8, 7]])
    # images whose 2x2 patches have those pixel sums (row-major over the 4x4 grid)
    images = (sums / 4).view(2, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    sel = PatchSelector(vit, 0.5, drop_blocks=(0, 1))  # stages keep 8, then 4
    assert sel.counts == [8, 4] and sel.num_kept == 4
    ticket = sel.select(images)
    assert ticket.tolist() == [[1, 4, 8, 13], [0, 2, 4, 6]]  # the 4 largest sums, ascending
    _, stages = sel.features(images)
    assert stages[0][0].tolist() == [8, 1, 13, 4, 10, 15, 3, 12]  # stage 1: top 8 by score, largest first
    assert compose_stage_indices(stages).sort(dim=1).values.equal(ticket)
    assert not ticket.is_inference()  # usable as an index in autograd-tracked student code


def test_compose_stage_indices():
    s0 = torch.tensor([[5, 2, 7, 0], [1, 3, 6, 4]])
    s1 = torch.tensor([[3, 1], [2, 0]])
    s2 = torch.tensor([[1], [0]])
    assert compose_stage_indices([s0]).tolist() == s0.tolist()
    assert compose_stage_indices([s0, s1]).tolist() == [[0, 2], [6, 1]]
    assert compose_stage_indices([s0, s1, s2]).tolist() == [[2], [6]]
    with pytest.raises(ValueError, match="stages"):
        compose_stage_indices([])


def test_selector_forward_trains_with_dropping_and_select_is_inference_only():
    vit = _vit(depth=4)
    sel = PatchSelector(vit, 0.75)
    assert sel.drop_blocks == (1, 2, 3) and sel.num_kept == 7
    x = torch.randn(3, 1, 8, 8)
    out = sel(x)
    out.sum().backward()
    assert out.shape == (3, 10) and vit.blocks[0].attn.qkv.weight.grad is not None
    sel.train()
    t = sel.select(x)
    assert sel.training and t.shape == (3, 7) and t.dtype == torch.int64
    assert all(len(set(row)) == 7 for row in t.tolist())
    assert sel.state_dict().keys() == {f"vit.{k}" for k in vit.state_dict()}


# ------------------------------------------------------------------------------------------------ students


def test_random_baselines_draw_the_selector_k():
    sel = PatchSelector(_vit(depth=4), 0.5)
    n, k = sel.num_patches, sel.num_kept
    x = torch.randn(5, 1, 8, 8)
    rnd, fixed = RandomPatches(n, k, seed=1), FixedRandomPatches(n, k, seed=1)
    for src in (SelectorPatches(sel), rnd, fixed):
        idx = src(x)
        assert idx.shape == (5, k) and int(idx.min()) >= 0 and int(idx.max()) < n
        assert all(len(set(row)) == k for row in idx.tolist())
    a, b = rnd(x), rnd(x)
    assert not a.equal(b)  # redrawn every call
    StepClock(rnd).on_step_start(None, 7)
    c = rnd(x)
    rnd.set_step(7)
    assert c.equal(rnd(x))  # a pure function of (seed, step, call): seeded and resumable
    f1, f2 = fixed(x), fixed(torch.randn(3, 1, 8, 8))
    assert f1[:3].equal(f2) and fixed(x).equal(f1)  # one set per batch slot, fixed
    assert len({tuple(r) for r in f1.tolist()}) > 1


def test_sparse_eval_uses_the_selectors_indices():
    sel = PatchSelector(_vit(depth=4), 0.75)
    student = ticketize_vit(_vit(depth=4))
    model = TicketStudent(student, RandomPatches(16, sel.num_kept, 0), SelectorPatches(sel)).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        want = student(x, sel.select(x))
        torch.testing.assert_close(model(x), want)
        model.eval_source = AllPatches()
        assert not torch.allclose(model(x), want)


def test_zero_fill_and_compact_tile():
    img = torch.arange(16.0).view(1, 1, 4, 4)  # patch 2: patches 0..3 = [[0,1,4,5], [2,3,6,7], ...]
    idx = torch.tensor([[3, 0]])
    z = zero_fill(img, idx, (2, 2))
    assert z[0, 0].tolist() == [[0, 1, 0, 0], [4, 5, 0, 0], [0, 0, 10, 11], [0, 0, 14, 15]]
    c = compact_tile(img, idx, (2, 2))  # K = 2 -> 2x2-patch image, kept patches by position, then zeros
    assert c.shape == (1, 1, 4, 4)
    assert c[0, 0].tolist() == [[0, 1, 10, 11], [4, 5, 14, 15], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert compact_tile(img, torch.tensor([[0, 1, 2, 3]]), (2, 2)).equal(img)


def test_swin_and_resnet_students():
    sel = PatchSelector(_vit(depth=4), 0.75)
    x = torch.randn(2, 1, 8, 8)
    swin = create_model("timm:swin_tiny_patch4_window7_224", num_classes=10, in_chans=1, img_size=(8, 8),
                        patch_size=2, window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 1))
    zero = TicketStudent(swin, SelectorPatches(sel), input_mode="zero", patch=sel.patch_size)
    assert zero(x).shape == (2, 10)
    resnet = create_model("cifar_resnet_8", num_classes=10, in_chans=1, img_size=(6, 6))  # K = 7 -> 3x3 patches
    compact = TicketStudent(resnet, SelectorPatches(sel), input_mode="compact", patch=sel.patch_size)
    out = compact(x)
    out.sum().backward()
    assert out.shape == (2, 10)


# ------------------------------------------------------------------------------------------------ export


def test_export_import_round_trip(tmp_path):
    from lth_kernels.data import create_dataset

    _, test, _ = create_dataset("digits")
    sel = PatchSelector(_vit(depth=4), 0.75)
    idx = export_tickets(sel, test, tmp_path / "t.safetensors", batch_size=100, dataset="digits")
    back, meta = load_tickets(tmp_path / "t.safetensors")
    assert back.equal(idx) and back.shape == (len(test), 7)
    assert back.equal(select_dataset(sel, test, batch_size=33))
    ident = sel.identity()
    assert {k: meta[k] for k in ident} == ident and meta["split"] == "test" and meta["dataset"] == "digits"
    other = PatchSelector(_vit(depth=4), 0.75)
    assert other.identity()["selector_sha256"] != ident["selector_sha256"]
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a data-ticket file"):
        load_tickets(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="path"):
        load_tickets(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------ end to end

_TINY = ["--training.training_steps", "3it", "--dense_training.training_steps", "4it",
         "--selector.training.training_steps", "2it", "--replicates", "1", "--speed_batch", "16"]


def test_embedded_preset_end_to_end(tmp_path, capsys):
    argv = ["--root", str(tmp_path), "--keep-rate", "0.75", "--export", "--quiet", *_TINY]
    assert data_ticket.main(argv) == 0
    printed = capsys.readouterr().out
    assert "a ticket" in printed and "images/s" in printed
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    row = summary["rows"]["0.75"]
    assert row["num_kept"] == 7 and row["num_patches"] == 16 and row["selector_acc"] is not None
    assert set(row["students"]) == set(data_ticket.STUDENTS)
    for st in row["students"].values():
        assert all(st[e]["n"] == 1 for e in ("all", "ticket", "random"))
    assert row["students"]["random_scaled"]["steps"] == 8  # ceil(3 / 0.75^3)
    assert (run / "plots" / "tickets.png").stat().st_size > 0
    assert (run / "plots" / "accuracy_vs_keep.png").stat().st_size > 0
    # ticket stability per image: across augmented views, and across the selector's checkpoints (step 0 = the
    # dense ViT before the fine-tune, step 1 saved on the way) against the final selector (step 2)
    st = row["stability"]
    assert st == json.loads((run / "keep_0.75" / "stability.json").read_text())
    assert st["num_images"] == 256 and len(st["augmentation"]["per_image"]) == 256
    assert sorted(st["checkpoints"]) == ["0", "1"] and (run / "keep_0.75" / "selector" / "step_1.safetensors").exists()
    assert all(0.0 <= v <= 1.0 for c in st["checkpoints"].values() for v in c["per_image"])
    assert st["random_expectation"] == pytest.approx(7 / 25)
    assert (run / "plots" / "ticket_stability.png").stat().st_size > 0
    idx, meta = load_tickets(run / "keep_0.75" / "tickets.safetensors")
    assert idx.shape == (360, 7) and meta["keep_rate"] == "0.75"
    speed = json.loads((run / "speed.json").read_text())
    assert speed["dense_images_per_s"] > 0 and speed["keep"]["0.75"]["student_images_per_s"] > 0
    # a second keep rate extends the same run directory and reuses the dense ViT and the all-patches student
    stamp = (run / "all" / "replicate_0" / "done.json").stat().st_mtime_ns
    argv2 = ["--root", str(tmp_path), "--keep-rate", "0.75,0.5", "--students", "ticket,all", "--quiet", *_TINY]
    assert data_ticket.main(argv2) == 0
    assert [p.name for p in tmp_path.iterdir()] == [run.name]
    assert (run / "all" / "replicate_0" / "done.json").stat().st_mtime_ns == stamp
    assert json.loads((run / "summary.json").read_text())["rows"]["0.5"]["num_kept"] == 2


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("bad", ["1.5", "0", "abc", "-0.2", "0.5,0.5", ""])
def test_bad_keep_rates_are_one_line_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        data_ticket.main(["--keep-rate", bad, "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--keep_rate" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="keep_rate"):
        PatchSelector(_vit(), 1.5)


def test_bad_hparams_in_python():
    with pytest.raises(HparamsError, match="--keep_rate"):
        DataTicketHparams(keep_rate=("nan",))
    with pytest.raises(HparamsError, match="--students"):
        DataTicketHparams(students=("ticket", "lottery"))


def test_selector_student_size_mismatch_is_a_one_line_error(tmp_path, capsys):
    argv = ["--root", str(tmp_path), "--selector.model_kwargs", "patch_size=4,embed_dim=16,depth=4,num_heads=2",
            *_TINY]
    assert data_ticket.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "patch grid 4x4 (16 patches) differs from the selector's 2x2" in err
    assert not any(tmp_path.glob("*/dense"))  # nothing was trained
    ckpt_argv = ["--root", str(tmp_path), "--selector.source", "checkpoint", *_TINY]
    assert data_ticket.main(ckpt_argv) == 2
    assert "--selector.checkpoint" in capsys.readouterr().err


def test_selector_from_a_local_checkpoint(tmp_path):
    from safetensors.torch import save_file

    vit = create_model("vit_tiny", num_classes=10, in_chans=1, img_size=(8, 8), patch_size=2, embed_dim=16, depth=4,
                       num_heads=2)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    hp = DataTicketHparams().with_overrides({
        "selector.source": "checkpoint", "selector.checkpoint": str(tmp_path / "vit.safetensors"),
        "selector.model_kwargs": {"patch_size": 2, "embed_dim": 16, "depth": 4, "num_heads": 2},  # smaller
        "selector.training.training_steps": "1it", "training.training_steps": "1it", "keep_rate": ["0.5"],
        "students": ["ticket"], "replicates": 1, "speed_batch": 8})
    run = data_ticket.run_data_ticket(hp, root=str(tmp_path / "runs"), progress=False)
    assert not (run / "dense").exists()
    rec = json.loads((run / "keep_0.5" / "ticket" / "replicate_0" / "eval.json").read_text())
    assert rec["num_kept"] == 2 and 0 <= rec["test_acc"]["ticket"] <= 1
    # the selector was fine-tuned from the checkpoint's weights (one step moves them a little), not from a fresh ViT
    sel_dir = run / "keep_0.5" / "selector"
    tuned = load_file(step_paths(sel_dir, json.loads((sel_dir / "done.json").read_text())["step"])[0])
    for k, w in vit.state_dict().items():
        if k.endswith(".weight") and w.dim() >= 2:  # (cls_token and pos_embed start near 0: one step moves them)
            corr = torch.corrcoef(torch.stack([tuned[f"vit.{k}"].flatten(), w.flatten()]))[0, 1]
            assert corr > 0.9, (k, float(corr))


def _record_training_targets(monkeypatch) -> dict:
    """{run-relative stage directory: [targets the loss saw, per step]} for every Trainer built from now on."""
    seen = {}
    init = Trainer.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        targets, loss_fn = seen.setdefault(self.out_dir, []), self.loss_fn

        def recording(out, y):
            targets.append(y.detach().clone())
            return loss_fn(out, y)

        self.loss_fn = recording

    monkeypatch.setattr(Trainer, "__init__", spy)
    return seen


def test_deit_augmentation_runs_through_selector_and_students(tmp_path, capsys, monkeypatch):
    aug = ["--augment.mixup", "0.8", "--augment.cutmix", "1.0", "--augment.random_erasing", "0.25"]
    argv = ["--root", str(tmp_path), "--keep-rate", "0.5", "--students", "ticket,random", "--quiet", *_TINY, *aug]
    targets = _record_training_targets(monkeypatch)
    assert data_ticket.main(argv) == 0
    (run,) = tmp_path.iterdir()
    # every training of the run (dense ViT, selector fine-tune, students) trains on mixed soft targets
    stages = {str(d.relative_to(run)): ys for d, ys in targets.items() if d is not None and ys}
    assert set(stages) == {"dense", "keep_0.5/selector", "keep_0.5/ticket/replicate_0", "keep_0.5/random/replicate_0"}
    for stage, ys in stages.items():
        assert all(y.dtype.is_floating_point and y.shape[1] == 10 for y in ys), stage
        second = torch.cat(ys).topk(2, dim=1).values[:, 1]  # a label's smoothing alone puts ~0.01 there
        assert bool((second > 0.05).any()), stage
    assert json.loads((run / "hparams.json").read_text())["augment"]["cutmix"] == 1.0
    for st in ("ticket", "random"):
        rec = json.loads((run / "keep_0.5" / st / "replicate_0" / "eval.json").read_text())
        assert 0 <= rec["test_acc"]["all"] <= 1
    assert data_ticket.main(["--root", str(tmp_path), "--augment.randaugment", "rand-m9", *_TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "randaugment" in err
    presets = data_ticket.PRESETS
    assert presets["deit_tiny-cifar10"]["augment"]["mixup"] == 0.8
