"""``lth elastic`` on tiny budgets: the embedded preset end to end (transformed ticket, every baseline, LMC,
table, plot, cost), resume without retraining, reuse of an existing IMP run, hparams, presets and errors."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lth_kernels.tickets import Ticket
from lth_kernels.training.checkpoint import step_paths
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.elastic.cli import main
from lth_kernels.workflows.elastic.hparams import ElasticHparams
from lth_kernels.workflows.elastic.report import forward_flops
from lth_kernels.workflows.elastic.runner import ElasticRunner, run_elastic


def _tiny(**changes) -> ElasticHparams:
    """The embedded preset on narrow MLPs, 2 epochs, one pruning level (51% of the weights removed)."""
    hp = ElasticHparams()
    imp = hp.imp.replace(levels=1, rewind="1ep",
                         model=hp.imp.model.replace(name="lenet_32_32_32"),
                         pruning=hp.imp.pruning.replace(fraction=0.51),
                         dataset=hp.imp.dataset.replace(batch_size=128),
                         training=hp.imp.training.replace(training_steps="2ep", eval_every="0it"))
    return hp.replace(imp=imp, **{"pairs": ("4:5",), "lmc_points": 5, **changes})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    hp = _tiny()
    return hp, root, run_elastic(hp, root=root, progress=False)


def _final(stage: Path) -> dict:
    done = json.loads((stage / "done.json").read_text())
    return load_file(step_paths(stage, done["step"])[0])


def test_embedded_preset_end_to_end(tiny_run):
    hp, root, path = tiny_run
    assert path == root / f"elastic-{hp.hashname()}"
    target = path / "replicate_0" / "target_5"
    expected = {"ett_from_4", "ett_random_copies_from_4", "ett_shuffled_from_4", "reinit_from_4", "random",
                "magnitude", "snip", "grasp", "synflow", "lmc_from_4"}
    assert expected <= {p.name for p in target.iterdir() if p.is_dir()}
    summary = json.loads((path / "summary.json").read_text())
    methods = [row["method"] for row in summary["rows"]]
    assert methods == ["Dense target", "IMP on target (rewind)", "Reinit <- 4", "ETT shuffled layerwise <- 4",
                       "Random prune (global)", "One-shot magnitude", "SNIP", "GraSP", "SynFlow",
                       "ETT random copies <- 4", "ETT <- 4"]
    for row in summary["rows"]:
        acc = row["cells"]["5"]["test_acc"]
        assert 0.0 <= acc <= 1.0
    table = (path / "table.md").read_text()
    assert "| ETT <- 4 |" in table and "lenet_32_32_32_32 (depth 5)" in table and "4 -> 5" in table
    assert (path / "plots" / "elastic.png").stat().st_size > 1000
    # the IMP runs are ordinary `lth imp` runs next to the elastic run
    assert {Path(p).parent for p in summary["imp_runs"].values()} == {root}


def test_transformed_ticket_is_the_source_ticket_mapped(tiny_run):
    hp, root, path = tiny_run
    er = ElasticRunner(hp, root=root, progress=False)
    src = er.imp(4)
    source_ticket = src.main_ticket(0, 1)
    ett = Ticket.load(path / "replicate_0" / "target_5" / "ett_from_4" / "mask.safetensors")
    info = json.loads((path / "replicate_0" / "target_5" / "elastic_from_4.json").read_text())
    assert info["mapping"] == "0:0;1:1,2;2:3" and info["copies"] == ["fc_layers.2"]
    assert torch.equal(ett["fc_layers.1.weight"], source_ticket["fc_layers.1.weight"])
    assert torch.equal(ett["fc_layers.2.weight"], source_ticket["fc_layers.1.weight"])  # the copy
    assert torch.equal(ett["fc_layers.3.weight"], source_ticket["fc_layers.2.weight"])
    assert torch.equal(ett["fc.weight"], source_ticket["fc.weight"])
    # sparsity arithmetic of the report: the copy adds fc_layers.1's kept weights to the source's prunable count
    prunable = [n for n in source_ticket if n != "fc.weight"]
    kept = sum(int(source_ticket[n].sum()) for n in prunable)
    assert info["source"]["kept"] == kept
    assert info["target"]["kept"] == kept + int(source_ticket["fc_layers.1.weight"].sum())
    # the transform starts from the source's rewind weights: the state the ETT stage trained from
    res, _ = er.transformed(0, 4, 5)
    assert res.ticket.equal(ett)
    assert torch.equal(res.state_dict["fc_layers.2.weight"], src.rewound_model(0).state_dict()["fc_layers.1.weight"])
    # controls: reinit keeps the mask; the random-copies ablation keeps counts and moves only the copy's mask
    reinit = Ticket.load(path / "replicate_0" / "target_5" / "reinit_from_4" / "mask.safetensors")
    rnd = Ticket.load(path / "replicate_0" / "target_5" / "ett_random_copies_from_4" / "mask.safetensors")
    assert reinit.equal(ett)
    assert [n for n in ett if not torch.equal(ett[n], rnd[n])] == ["fc_layers.2.weight"]
    # the layerwise shuffle keeps every layer's count (the output layer, excluded, untouched) at other places
    shuf = Ticket.load(path / "replicate_0" / "target_5" / "ett_shuffled_from_4" / "mask.safetensors")
    assert {n: int(shuf[n].sum()) for n in ett} == {n: int(ett[n].sum()) for n in ett}
    assert torch.equal(shuf["fc.weight"], ett["fc.weight"])
    assert all(not torch.equal(shuf[n], ett[n]) for n in ett if n != "fc.weight")
    assert int(rnd["fc_layers.2.weight"].sum()) == int(ett["fc_layers.2.weight"].sum())
    assert all(int((w != 0).sum()) <= int(ett[n].sum())
               for n, w in _final(path / "replicate_0" / "target_5" / "ett_from_4").items() if n in ett)


def test_baselines_at_matched_sparsity_and_lmc(tiny_run):
    hp, root, path = tiny_run
    target = path / "replicate_0" / "target_5"
    # the baselines keep exactly the transformed ticket's count of prunable weights (not the nominal density,
    # which copied blocks move away from)
    ett = json.loads((target / "ett_from_4" / "sparsity_report.json").read_text())["prunable"]
    nominal = ett["total"] - math.ceil(round(0.51 * ett["total"], 9))
    assert ett["kept"] != nominal
    for method in ("random", "magnitude", "snip", "grasp", "synflow"):
        rep = json.loads((target / method / "sparsity_report.json").read_text())
        assert rep["prunable"]["kept"] == ett["kept"] and rep["prunable"]["total"] == ett["total"], method
        assert rep["layers"]["fc.weight"]["density"] == 1.0  # the model's exclusion is kept
    summary = json.loads((path / "summary.json").read_text())
    assert summary["baseline_density"]["1"]["5"] == pytest.approx(ett["density"])
    assert f"depth 5 {100 * ett['density']:.2f}%" in (path / "table.md").read_text()
    lmc = json.loads((target / "lmc_from_4" / "lmc.json").read_text())
    assert lmc["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(lmc["test_error"]) == 5
    assert lmc["instability"] == pytest.approx(max(lmc["test_error"]) - (lmc["test_error"][0] + lmc["test_error"][-1])
                                               / 2)
    a, b = _final(target / "lmc_from_4" / "copy_a"), _final(target / "lmc_from_4" / "copy_b")
    assert not torch.equal(a["fc_layers.0.weight"], b["fc_layers.0.weight"])  # different data orders


def test_cost_accounting(tiny_run):
    hp, root, path = tiny_run
    cost = json.loads((path / "summary.json").read_text())["cost"]
    src, tgt = cost["networks"]["4"], cost["networks"]["5"]
    # lenet_32_32_32 on 8x8 digits: 2 * (64*32 + 32*32 + 32*32 + 32*10) forward FLOPs per sample
    assert src["forward_flops"] == 2 * (64 * 32 + 2 * 32 * 32 + 32 * 10)
    assert tgt["forward_flops"] == src["forward_flops"] + 2 * 32 * 32
    assert src["dense_training"] == 22 * 128 * 3 * src["forward_flops"]  # 2 epochs of 11 steps of 128
    # IMP to level 1: 11 dense steps to θ_K, then levels 0 and 1 from step 11: more than one dense training
    assert 1.0 < src["imp_x_dense"] < 2.0 and 0.0 < cost["ett"]["4:5"]["x_dense"] < 0.5
    assert cost["total"]["elastic"] < cost["total"]["imp_on_every_target"] + src["imp_to_level"]


def test_rerun_resumes_without_training(tiny_run):
    hp, root, path = tiny_run
    before = (path / "summary.json").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name in ("done.json", "metrics.jsonl", "lmc.json")}
    assert len(stamps) > 20
    assert run_elastic(hp, root=root, progress=False) == path
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or evaluated again
    after = json.loads((path / "summary.json").read_text())
    assert after["rows"] == json.loads(before)["rows"]
    assert _tiny(pairs=("4:5", "4:3")).hashname() == hp.hashname()  # more pairs extend the same run


def test_existing_imp_run_is_reused_and_checked(tiny_run, tmp_path):
    hp, root, path = tiny_run
    er = ElasticRunner(hp, root=root, progress=False)
    src_path = er.imp(4).path
    other = ElasticRunner(hp.replace(baselines=(), lmc=False), root=tmp_path, imp_runs={4: src_path}, progress=False)
    assert other.imp(4).path == src_path and other.imp(5).path.parent == tmp_path
    with pytest.raises(ValueError, match="--imp_runs: .* trains lenet_32_32_32, not depth 5"):
        ElasticRunner(hp, root=tmp_path, imp_runs={5: src_path}, progress=False).imp(5)


def test_squeeze_pair_with_explicit_mapping(tmp_path):
    hp = _tiny(pairs=("4:3",), baselines=(), lmc=False, block_mapping={"4:3": "0:0;2:1"})
    path = run_elastic(hp, root=tmp_path, progress=False)
    info = json.loads((path / "replicate_0" / "target_3" / "elastic_from_4.json").read_text())
    assert info["mapping"] == "0:0;2:1" and info["copies"] == []
    summary = json.loads((path / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["ETT <- 4"]


def test_impossible_pairs_fail_before_training(tmp_path):
    # lenet_32 has one hidden layer: its only unit is the first one, which is never replicated
    with pytest.raises(ValueError, match="--pairs 2:3: target: stage 0 of the source has only its first"):
        ElasticRunner(_tiny(pairs=("2:3",)), root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="--pairs 4:5: block_mapping: stage 0 .* leaves target units \\[3\\]"):
        ElasticRunner(_tiny(block_mapping={"4:5": "0:0;1:1,2"}), root=tmp_path, progress=False)
    resnet = _tiny().imp.replace(model=_tiny().imp.model.replace(name="cifar_resnet_8"))
    with pytest.raises(ValueError, match="6n\\+2"):
        ElasticRunner(_tiny(pairs=("8:9",)).replace(imp=resnet), root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="--pairs 8:20: target: stage 0 of the source has only its first"):
        ElasticRunner(_tiny(pairs=("8:20",)).replace(imp=resnet), root=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # nothing was created


def test_hparams_presets_and_cli(capsys, tmp_path):
    hp = ElasticHparams()
    assert hp.pair_list == [(4, 6), (4, 3)] and hp.imp.model.name == "lenet_100_100_100"
    assert hp.matched_density == pytest.approx(0.64 ** 5)
    with pytest.raises(HparamsError, match="--pairs: expected source:target depths that differ"):
        hp.replace(pairs=("20:20",))
    with pytest.raises(HparamsError, match="--block_mapping: keys are pairs of --pairs"):
        hp.replace(block_mapping={"20:32": "0:0"})
    with pytest.raises(HparamsError, match="--baselines: unknown baseline 'rigl'"):
        hp.replace(baselines=("rigl",))
    assert main(["--preset", "cifar_resnet-cifar10", "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cifar = ElasticHparams.from_json(out.split("\n", 1)[1])
    assert cifar.pairs == ("20:32", "32:56", "56:32") and cifar.imp.rewind == "1000it"
    assert cifar.imp.model.name == "cifar_resnet_20" and cifar.imp.num_levels == 10
    assert main(["--preset", "resnet-imagenet", "--dry-run", "--root", str(tmp_path)]) == 0
    imagenet = ElasticHparams.from_json(capsys.readouterr().out.split("\n", 1)[1])
    assert imagenet.pairs == ("26:18", "26:34") and imagenet.imp.model.kwargs == {"layers": [2, 3, 4, 3]}
    with pytest.raises(SystemExit):
        main(["--pairs", "4:7x"])
    assert "--pairs: expected source:target" in capsys.readouterr().err


def test_forward_flops_conv():
    from lth_kernels.models import create_model

    model = create_model("cifar_resnet_8", num_classes=10, in_chans=3, img_size=8)
    flops = forward_flops(model, (3, 8, 8))
    assert flops["conv.weight"] == 2 * 3 * 9 * 16 * 64
    assert flops["blocks.1.shortcut.0.weight"] == 2 * 16 * 32 * 16  # 1x1 stride-2 conv to 4x4
    assert flops["fc.weight"] == 2 * 64 * 10
    assert set(flops) == {n for n, _ in model.named_parameters() if n.endswith("weight") and "bn" not in n
                          and "shortcut.1" not in n}

