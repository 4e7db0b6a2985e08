"""bench/e2e.py: its pieces against plain PyTorch, its derived rows on constructed inputs, and the CPU smoke run
end to end through the result writer, both data pipelines included (no timing is asserted)."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import _e2e_report as report
from bench import _e2e_variants as ev
from bench import e2e
from lth_kernels.nn import MaskedLinear
from lth_kernels.tickets import Ticket


def _ticket(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Ticket({f"{n}.weight": torch.rand(m.weight.shape, generator=g) < density for n, m in model.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d))})


def test_wm_layers_compute_w_times_m_and_share_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Flatten(), nn.Linear(5 * 6 * 6, 7))
    params = [p for p in model.parameters()]
    ref = [p.detach().clone() for p in params]
    ticket = _ticket(model)
    out = ev.wm_masked(model, ticket)
    assert out is model and [type(m) for m in model] == [ev.WMConv2d, nn.Flatten, ev.WMLinear]
    assert all(a is b for a, b in zip(model.parameters(), params))  # same Parameters: optimizer state stays valid
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y = model.double()(x)
    m0, m2 = ticket["0.weight"], ticket["2.weight"]
    w0, w2 = ref[0].double() * m0, ref[2].double() * m2
    expect = F.linear(F.conv2d(x, w0, ref[1].double(), padding=1).flatten(1), w2, ref[3].double())
    torch.testing.assert_close(y, expect)
    y.square().sum().backward()
    assert model[0].weight.grad[~m0].eq(0).all() and model[2].weight.grad[~m2].eq(0).all()
    assert model[2].weight.grad[m2].ne(0).any()
    assert model[0].weight[~m0].eq(0).all()  # zeroed once at construction, as open_lth


def test_wm_masked_wraps_only_the_ticket_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ticket = {"2.weight": torch.ones(2, 4, dtype=torch.bool)}
    ev.wm_masked(model, ticket)
    assert type(model[0]) is nn.Linear and type(model[2]) is ev.WMLinear


def test_semi_structured_variant_matches_masked_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    ticket = ev.make_ticket(model, "2:4")
    dense_w = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    ev.apply_variant(model, "ours_2to4", ticket)
    assert [type(model[i]) for i in (0, 2)] == [ev.SemiStructuredMaskedLinear] * 2
    assert ev.ticket_density(ticket) == 0.5
    x = torch.randn(3, 16)
    h = F.relu(F.linear(x, dense_w[0] * ticket["0.weight"], model[0].bias))
    torch.testing.assert_close(model(x), F.linear(h, dense_w[1] * ticket["2.weight"], model[2].bias))


def test_apply_variant_ours_is_sparsify_and_rejects_unknown_names():
    model = nn.Sequential(nn.Linear(8, 8))
    ticket = ev.make_ticket(model, "unstructured80")
    assert isinstance(ev.apply_variant(model, "ours", ticket)[0], MaskedLinear)
    assert abs(ev.ticket_density(ticket) - 0.2) < 0.02
    with pytest.raises(ValueError, match="variant: unknown variant 'nope'"):
        ev.apply_variant(model, "nope", ticket)
    with pytest.raises(ValueError, match="ticket: unknown ticket 'block3'"):
        ev.make_ticket(model, "block3")


def test_step_timer_windows_on_cpu():
    timer = ev.StepTimer(torch.device("cpu"), warmup=2, steps=3, windows=2)
    assert timer.end_step == 8
    timer.on_train_start(None, 0)
    for step in range(1, 9):
        time.sleep(0.002 if step <= 5 else 0.02)  # second window slower
        timer.on_after_optimizer_step(None, step)
    assert timer.warmup_s > 0
    assert 2 <= timer.ms_per_step() < 200  # median of two windows: between the fast and the slow one
    short = ev.StepTimer(torch.device("cpu"), warmup=0, steps=1, windows=3)
    short.on_train_start(None, 0)
    short.on_after_optimizer_step(None, 0)
    with pytest.raises(RuntimeError, match="1 of 4 step marks"):
        short.ms_per_step()


def _row(section, variant, ticket, ips, mode="eager", pipeline="memory", density=None):
    return {"section": section, "model": section, "variant": variant, "ticket": ticket, "mode": mode,
            "pipeline": pipeline, "batch": 128, "images_per_s": ips, "ms_per_step": 128e3 / ips, "density": density}


def test_ratios_imp_extrapolation_and_targets():
    rows = [_row("resnet20", "dense", "dense", 1000.0, pipeline="device"),
            _row("resnet20", "dense", "dense", 250.0, pipeline="loader_w0"),
            _row("resnet20", "dense", "dense", 400.0, pipeline="loader_auto"),
            _row("resnet20", "wm", "unstructured80", 900.0, pipeline="device", density=0.2),
            _row("resnet20", "ours", "unstructured80", 1200.0, pipeline="device", density=0.2),
            _row("resnet20", "wm", "unstructured95", 900.0, pipeline="device", density=0.05),
            _row("resnet20", "ours", "unstructured95", 1500.0, pipeline="device", density=0.05),
            _row("vit_b", "dense", "dense", 100.0), _row("vit_b", "ours", "block64_90", 160.0, density=0.1),
            _row("vit_b", "wm", "block64_90", 80.0, density=0.1),
            _row("deit_s", "dense", "dense", 100.0), _row("deit_s", "student_selector", "keep0.7", 150.0)]
    report.add_ratios(rows)
    by = {(r["variant"], r["ticket"], r["pipeline"]): r for r in rows}
    assert by[("ours", "unstructured80", "device")]["vs_dense"] == pytest.approx(1.2)
    assert by[("ours", "unstructured80", "device")]["vs_wm"] == pytest.approx(1200 / 900)
    assert by[("dense", "dense", "loader_w0")]["vs_dense"] == pytest.approx(0.25)
    assert by[("wm", "block64_90", "memory")]["vs_wm"] is None and by[("dense", "dense", "device")]["vs_wm"] is None

    imp = {r["variant"]: r["imp10_hours"] for r in report.imp_rows(rows)}
    assert set(imp) == {"dense", "wm", "ours", "dense_loader"}  # no ResNet-50 rows: only ResNet-20's
    images = 160 * 390 * 128  # open_lth cifar_resnet_20: 160 epochs of CIFAR-10 at batch 128, tail dropped
    levels = [1 - 0.8 ** k for k in range(10)]

    def ours(s):  # piecewise linear through (0, 1000), (0.8, 1200), (0.95, 1500)
        return 1000 + 200 * s / 0.8 if s <= 0.8 else 1200 + 300 * (s - 0.8) / 0.15

    assert imp["dense"] == pytest.approx(10 * images / 1000 / 3600)
    assert imp["ours"] == pytest.approx(sum(images / ours(s) for s in levels) / 3600)
    assert imp["dense_loader"] == pytest.approx(10 * images / 400 / 3600)

    targets = {r["target"]: r for r in report.target_rows(rows)}
    t = targets["resnet20 device pipeline vs the best DataLoader, eager"]
    assert t["value"] == pytest.approx(2.5) and t["met"] is False and t["goal"] == 3.0
    assert targets["vit_b 64-block 90% ticket vs dense, eager"]["met"] is True
    assert targets["deit_s keep 0.7 data ticket (with selection) vs dense, eager"]["value"] == pytest.approx(1.5)
    assert targets["every unstructured ticket vs W*M (min), eager"]["value"] == pytest.approx(1200 / 900)
    assert targets["vit_b 64-block 90% ticket vs dense, compile"]["met"] is None  # not measured


def test_plan_covers_the_benchmark():
    quick, full, smoke = e2e.plan("quick"), e2e.plan("full"), e2e.plan("smoke")
    keys = {(r.case.section, r.variant, r.ticket, r.pipeline, r.mode) for r in full}
    for t in ("unstructured80", "unstructured95", "block64_90", "2:4"):
        for s in ("resnet50", "vit_b"):
            assert {(s, v, t, "memory", m) for v in ("wm", "ours") for m in ("eager", "compile")} <= keys
    assert {("deit_s", "student_selector", f"keep{r}", "memory", "eager") for r in (0.9, 0.7, 0.5)} <= keys
    assert {("resnet20", "dense", "dense", p, "eager") for p in ("device", "loader_w0", "loader_auto")} <= keys
    eager_quick = {(r.case.section, r.variant, r.ticket, r.pipeline) for r in quick if r.mode == "eager"}
    assert eager_quick == {k[:4] for k in keys}  # --quick drops compiled rows only
    assert {r.mode for r in quick} == {"eager", "compile"} and len(quick) < len(full)
    assert {r.case.section for r in smoke} == {"resnet20", "resnet50", "vit_b", "deit_s"}
    assert e2e.plan("quick", ["deit_s"], ("eager",)) == [r for r in quick if r.case.section == "deit_s"
                                                         and r.mode == "eager"]
    full_models = {r.case.model for r in full}
    assert {"cifar_resnet_20", "timm:resnet50", "timm:vit_base_patch16_224", "timm:deit_small_patch16_224"} == \
        full_models


def test_list_prints_the_plan_in_execution_order(capsys):
    assert e2e.main(["--quick", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(e2e.plan("quick"))
    assert lines[0].startswith("resnet20 cifar_resnet_20 dense dense eager device")
    assert lines.index("deit_s timm:deit_small_patch16_224 dense dense compile memory batch 128") > \
        max(i for i, line in enumerate(lines) if " eager " in line)  # compiled rows after every eager row


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit):
        e2e.main(["--smoke", "--steps", "0"])
    assert "--steps: expected >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        e2e.main(["--smoke", "--budget-s", "-1"])
    assert "--budget-s: expected > 0" in capsys.readouterr().err


def test_smoke_run_writes_every_row(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert e2e.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the smoke's single thread does not leak into the process
    out = capsys.readouterr().out
    assert "smoke" in out and "not a result" in out
    (path,) = tmp_path.glob("*-e2e.json")
    data = json.loads(path.read_text())
    assert data["env"]["plan"] == "smoke" and data["env"]["commit"]
    rows = data["rows"]
    measured = [r for r in rows if r["section"] not in ("imp10", "target")]
    assert len(measured) == len(e2e.plan("smoke"))
    assert [r for r in measured if r.get("error")] == []
    assert all(r["ms_per_step"] > 0 and r["images_per_s"] > 0 for r in measured)
    r20 = {r["pipeline"]: r for r in measured if r["section"] == "resnet20" and r["variant"] == "dense"}
    assert set(r20) == {"device", "loader_w0"} and r20["loader_w0"]["workers"] == 0
    deit = {r["variant"]: r for r in measured if r["section"] == "deit_s" and r["mode"] == "eager"}
    assert deit["student_selector"]["tokens"] < deit["dense"]["tokens"] == 65  # 8x8 grid of 4-pixel patches + CLS
    assert {r["variant"] for r in rows if r["section"] == "imp10"} >= {"dense", "wm", "ours"}
    assert any(r["section"] == "target" and r["value"] is not None for r in rows)
    assert (tmp_path / path.name.replace(".json", ".md")).exists()
