"""Elastic ticket transform: generated mappings follow the ETT rules, the transform covers every target key
once with the right source, copies are identical, sparsity arithmetic, overrides and errors."""

import itertools

import pytest
import torch

from lth_kernels.models import create_model
from lth_kernels.tickets import Ticket, prune
from lth_kernels.tickets.elastic import (
    ElasticError,
    check_mapping,
    format_mapping,
    generate_mapping,
    layout_of,
    model_depth,
    model_for_depth,
    parse_mapping,
    transform,
)


def _n(depth):  # blocks per stage of cifar_resnet_<depth>
    return (depth - 2) // 6


def _map(src_depth, dst_depth, strategy="interpolate"):
    return format_mapping(generate_mapping([_n(src_depth)] * 3, [_n(dst_depth)] * 3, strategy))


# ----------------------------------------------------------------------------------------------- mappings


@pytest.mark.parametrize("src, dst, strategy, expected", [
    # stretch: every non-down-sampling block once more (B1 and B2, never B1 twice)
    (20, 32, "interpolate", "0:0;1:1,2;2:3,4"),
    (20, 32, "append", "0:0;1:1,3;2:2,4"),
    # the reference code's own example for ResNet-32 -> 56
    (32, 56, "interpolate", "0:0;1:1,2;2:3,4;3:5,6;4:7,8"),
    (32, 56, "append", "0:0;1:1,5;2:2,6;3:3,7;4:4,8"),
    # squeeze: interleaved drop that keeps B1 (no run of dropped early blocks); append drops the tail
    (56, 32, "interpolate", "0:0;1:1;3:2;5:3;7:4"),
    (56, 32, "append", "0:0;1:1;2:2;3:3;4:4"),
    (20, 14, "interpolate", "0:0;1:1"),
    (20, 14, "append", "0:0;1:1"),
    # uneven stretch: the earlier block gets the extra copy
    (20, 26, "interpolate", "0:0;1:1,2;2:3"),
    (32, 44, "interpolate", "0:0;1:1,2;2:3,4;3:5;4:6"),
    (14, 32, "interpolate", "0:0;1:1,2,3,4"),
    (20, 20, "interpolate", "0:0;1:1;2:2"),
])
def test_hand_checked_mappings(src, dst, strategy, expected):
    assert _map(src, dst, strategy) == expected


@pytest.mark.parametrize("n_src, n_dst", list(itertools.product(range(2, 10), range(1, 12))))
@pytest.mark.parametrize("strategy", ["interpolate", "append"])
def test_generated_mappings_follow_the_rules(n_src, n_dst, strategy):
    (stage,) = generate_mapping([n_src], [n_dst], strategy)
    check_mapping([stage], [n_src], [n_dst])  # every target unit exactly once, B0 -> B0 only
    counts = {src: len(t) for src, t in stage}
    rest = [counts.get(j, 0) for j in range(1, n_src)]
    if n_dst >= n_src:
        # as many distinct units as possible, as few times each: counts differ by at most one, earlier >= later
        assert min(rest) >= 1 and max(rest) - min(rest) <= 1 and rest == sorted(rest, reverse=True)
    else:
        kept = [j for j in range(1, n_src) if counts.get(j)]
        assert all(c <= 1 for c in rest) and len(kept) == n_dst - 1
        if kept:
            assert kept[0] == 1  # never drop the first blocks
            if strategy == "interpolate":  # evenly spread: no run of dropped units longer than needed
                runs = [b - a - 1 for a, b in zip(kept, [*kept[1:], n_src])]
                assert max(runs) <= -(-(n_src - 1) // (n_dst - 1)) - 1


def test_interpolate_and_append_orders():
    (inter,) = generate_mapping([3], [7], "interpolate")
    (app,) = generate_mapping([3], [7], "append")
    order = lambda st: [src for t in range(7) for src, tg in st if t in tg]  # noqa: E731
    assert order(inter) == [0, 1, 1, 1, 2, 2, 2]
    assert order(app) == [0, 1, 2, 1, 2, 1, 2]


def test_parse_format_roundtrip_and_errors():
    m = parse_mapping("0:0;1:1,2;2:3,4", 3)
    assert len(m) == 3 and format_mapping(m) == "0:0;1:1,2;2:3,4"
    per_stage = parse_mapping("0:0;1:1|0:0;1:1,2", 2)
    assert format_mapping(per_stage) == "0:0;1:1|0:0;1:1,2"
    with pytest.raises(ElasticError, match="block_mapping: .*2 '\\|'-separated stage mappings, the models have 3"):
        parse_mapping("0:0|0:0", 3)
    with pytest.raises(ElasticError, match="block_mapping: expected 'src:tgt"):
        parse_mapping("0:0;1:x", 1)
    with pytest.raises(ElasticError, match=r"leaves target units \[4\] unwritten"):
        check_mapping(parse_mapping("0:0;1:1,2;2:3", 1), [3], [5])
    with pytest.raises(ElasticError, match="writes target unit 2 twice"):
        check_mapping(parse_mapping("0:0;1:1,2;2:2,3,4", 1), [3], [5])
    with pytest.raises(ElasticError, match="first \\(down-sampling\\) unit one-to-one"):
        check_mapping(parse_mapping("0:0,1;1:2;2:3,4", 1), [3], [5])
    with pytest.raises(ElasticError, match="reads source unit 3"):
        check_mapping(parse_mapping("0:0;3:1,2;2:3,4", 1), [3], [5])
    with pytest.raises(ElasticError, match="only its first"):
        generate_mapping([1], [3])
    with pytest.raises(ElasticError, match="strategy: expected one of"):
        generate_mapping([3], [5], "zigzag")


# ----------------------------------------------------------------------------------------------- transform


def _model(name, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=1, img_size=8, **kw)


def _source(name="cifar_resnet_20", fraction=0.6):
    model = _model(name)
    with torch.no_grad():  # non-trivial BN statistics, so that copying them is tested
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return model, prune(model, "magnitude", fraction, scope="layerwise")


def test_resnet_20_to_32_covers_every_target_key_once_with_its_source():
    src, ticket = _source()
    dst = _model("cifar_resnet_32", seed=1)
    res = transform(src.state_dict(), dst.state_dict(), ticket=ticket)
    target = dst.state_dict()
    assert list(res.state_dict) == list(target) == list(res.source_of)  # every key, once, in target order
    assert all(res.state_dict[k].shape == v.shape for k, v in target.items())
    dst.load_state_dict(res.state_dict, strict=True)
    res.ticket.match(dst, strict=True)  # a mask for every maskable target weight
    assert set(res.ticket) == set(Ticket.from_model(dst))
    # stem and head copied as is; block 2 of the target is a copy of source block 1 (stage 0, "1:1,2")
    assert res.source_of["conv.weight"] == "conv.weight" and res.source_of["fc.bias"] == "fc.bias"
    assert res.source_of["blocks.2.bn1.running_mean"] == "blocks.1.bn1.running_mean"
    # stage 1 starts at target block 5 (source block 3): its down-sampling block is copied one-to-one
    assert res.source_of["blocks.5.shortcut.0.weight"] == "blocks.3.shortcut.0.weight"
    assert res.source_of["blocks.14.conv2.weight"] == "blocks.8.conv2.weight"
    assert res.copies == ("blocks.2", "blocks.4", "blocks.7", "blocks.9", "blocks.12", "blocks.14")
    assert layout_of(target).lengths == (5, 5, 5)


def test_copied_blocks_carry_identical_weights_and_masks():
    src, ticket = _source()
    sd = src.state_dict()
    dst = _model("cifar_resnet_56", seed=1)
    res = transform(sd, dst.state_dict(), ticket=ticket, strategy="append")
    for key, skey in res.source_of.items():
        assert torch.equal(res.state_dict[key], sd[skey]), key  # weights, BN affine and running stats
        if skey in ticket:
            assert torch.equal(res.ticket[key], ticket[skey]), key
    # 20 -> 56 repeats B1 and B2 of every stage four times: all copies of one unit are the same tensor values
    groups = {}
    for key, skey in res.source_of.items():
        groups.setdefault(skey, []).append(key)
    assert max(len(v) for v in groups.values()) == 4
    assert res.state_dict["blocks.1.conv1.weight"].data_ptr() != res.state_dict["blocks.3.conv1.weight"].data_ptr()


def test_sparsity_arithmetic():
    src, ticket = _source(fraction=0.75)
    dst = _model("cifar_resnet_32", seed=1)
    res = transform(src.state_dict(), dst.state_dict(), ticket=ticket)
    rep = res.report
    kept = lambda names: sum(int(ticket[n].sum()) for n in names)  # noqa: E731
    size = lambda names: sum(ticket[n].numel() for n in names)  # noqa: E731
    copied = [n for n in ticket if n.split(".")[1] in {"1", "2", "4", "5", "7", "8"} and n.startswith("blocks.")]
    assert rep["source"]["kept"] == ticket.num_kept and rep["source"]["total"] == ticket.num_total
    assert rep["target"]["kept"] == ticket.num_kept + kept(copied) == res.ticket.num_kept
    assert rep["target"]["total"] == ticket.num_total + size(copied) == res.ticket.num_total
    assert rep["sparsity_change"] == pytest.approx(res.ticket.sparsity - ticket.sparsity)
    assert len(rep["stages"]) == 3
    # layerwise pruning: every layer is 25% dense, so copies keep the total density exactly
    assert rep["target"]["density"] == pytest.approx(rep["source"]["density"], abs=1e-3)
    assert [s["target"]["kept"] for s in rep["stages"]] == [
        sum(int(res.ticket[n].sum()) for n in res.ticket if n.startswith(tuple(f"blocks.{i}." for i in r)))
        for r in (range(0, 5), range(5, 10), range(10, 15))]


def test_squeeze_56_to_32_and_exclusions_in_report():
    src, ticket = _source("cifar_resnet_56", fraction=0.5)
    dst = _model("cifar_resnet_32", seed=1)
    res = transform(src.state_dict(), dst.state_dict(), ticket=ticket, exclude=("fc.weight",))
    assert format_mapping(res.mapping) == "0:0;1:1;3:2;5:3;7:4" and res.copies == ()
    assert res.source_of["blocks.3.conv1.weight"] == "blocks.5.conv1.weight"
    assert res.source_of["blocks.14.conv1.weight"] == "blocks.25.conv1.weight"
    assert res.report["source"]["total"] == ticket.num_total - ticket["fc.weight"].numel()
    dst.load_state_dict(res.state_dict)


def test_random_copies_ablation_permutes_only_the_copies():
    src, ticket = _source(fraction=0.5)
    dst = _model("cifar_resnet_32", seed=1)
    plain = transform(src.state_dict(), dst.state_dict(), ticket=ticket)
    rnd = transform(src.state_dict(), dst.state_dict(), ticket=ticket, random_copies=torch.Generator().manual_seed(0))
    assert rnd.ticket.metadata["strategy"] == "elastic_random_copies"
    changed = {k.rsplit(".", 2)[0] for k in plain.ticket if not torch.equal(plain.ticket[k], rnd.ticket[k])}
    assert changed and all(k.startswith(plain.copies) for k in changed)
    for k in plain.ticket:
        assert int(plain.ticket[k].sum()) == int(rnd.ticket[k].sum())  # same count per tensor
    assert all(torch.equal(plain.state_dict[k], rnd.state_dict[k]) for k in plain.state_dict)


def test_explicit_mapping_overrides_and_readable_errors():
    src, ticket = _source()
    dst = _model("cifar_resnet_32", seed=1)
    res = transform(src.state_dict(), dst.state_dict(), ticket=ticket, mapping="0:0;1:1,2,3,4;2:")
    assert res.source_of["blocks.4.conv1.weight"] == "blocks.1.conv1.weight"
    with pytest.raises(ElasticError, match="unwritten"):
        transform(src.state_dict(), dst.state_dict(), mapping="0:0;1:1,2;2:3")
    with pytest.raises(ElasticError, match="source is a cifar_resnet network, target a mlp one"):
        transform(src.state_dict(), _model("lenet_16_16").state_dict())
    wide = _model("cifar_resnet_32_8")
    with pytest.raises(ElasticError, match="has shape .* the mapping pairs units of different widths"):
        transform(src.state_dict(), wide.state_dict())


def test_mlp_and_vgg_and_timm_resnet_layouts():
    mlp_src, mlp_ticket = _source("lenet_32_32_32", fraction=0.5)
    mlp_dst = _model("lenet_32_32_32_32_32")
    assert layout_of(mlp_src.state_dict()).lengths == (3,)
    res = transform(mlp_src.state_dict(), mlp_dst.state_dict(), ticket=mlp_ticket)
    assert format_mapping(res.mapping) == "0:0;1:1,2;2:3,4"
    assert res.source_of["fc_layers.4.weight"] == "fc_layers.2.weight" and res.source_of["fc.weight"] == "fc.weight"
    # lenet_300_100: the 300 -> 100 layer changes the width, so it starts a second stage
    assert layout_of(_model("lenet_300_100").state_dict()).lengths == (1, 1)

    vgg = {n: create_model(n, num_classes=10, in_chans=3, img_size=32).state_dict()
           for n in ("cifar_vgg_11", "cifar_vgg_13", "cifar_vgg_16")}
    assert layout_of(vgg["cifar_vgg_13"]).lengths == (2, 2, 2, 2, 2)
    assert layout_of(vgg["cifar_vgg_16"]).lengths == (2, 2, 3, 3, 3)
    res = transform(vgg["cifar_vgg_13"], vgg["cifar_vgg_16"])
    assert format_mapping(res.mapping) == "0:0;1:1|0:0;1:1|0:0;1:1,2|0:0;1:1,2|0:0;1:1,2"
    assert res.source_of["layers.8.conv.weight"] == "layers.7.conv.weight"  # stage 2: [6, 7, 8] <- [6, 7]
    assert res.source_of["layers.12.bn.running_var"] == "layers.10.bn.running_var"  # [10, 11, 12] <- [9, 10]
    with pytest.raises(ElasticError, match="only its first"):
        transform(vgg["cifar_vgg_11"], vgg["cifar_vgg_13"])

    def timm_sd(depth):
        name, kw = model_for_depth("timm:resnet18", {}, depth)
        return create_model(name, num_classes=10, in_chans=3, img_size=32, **kw).state_dict()

    r26, r18, r34 = timm_sd(26), timm_sd(18), timm_sd(34)
    assert layout_of(r26).lengths == (2, 3, 4, 3) and layout_of(r34).lengths == (3, 4, 6, 3)
    assert format_mapping(transform(r26, r18).mapping) == "0:0;1:1"  # every stage keeps B0 and B1
    res = transform(r26, r34)
    assert format_mapping(res.mapping) == "0:0;1:1,2|0:0;1:1,2;2:3|0:0;1:1,2;2:3,4;3:5|0:0;1:1;2:2"
    assert res.source_of["layer3.5.conv1.weight"] == "layer3.3.conv1.weight"
    assert res.source_of["layer2.0.downsample.0.weight"] == "layer2.0.downsample.0.weight"
    res = transform(r34, r18, mapping="0:0;2:1|0:0;3:1|0:0;5:1|0:0;2:1")  # explicit per-stage override
    assert res.source_of["layer3.1.bn2.weight"] == "layer3.5.bn2.weight"


def test_model_names_for_depths():
    assert model_for_depth("cifar_resnet_20_8", {"init": "kaiming_normal"}, 32) == (
        "cifar_resnet_32_8", {"init": "kaiming_normal"})
    assert model_for_depth("lenet_64_64", {}, 5) == ("lenet_64_64_64_64", {})
    assert model_for_depth("lenet_64_64_64", {}, 3) == ("lenet_64_64", {})
    assert model_for_depth("timm:resnet34", {}, 26) == ("timm:resnet18", {"layers": [2, 3, 4, 3]})
    assert model_for_depth("timm:resnet18", {"layers": [2, 3, 4, 3]}, 34) == ("timm:resnet34", {})
    assert model_depth("timm:resnet18", {"layers": [2, 3, 4, 3]}) == 26
    assert model_depth("cifar_resnet_56") == 56 and model_depth("lenet_64_64_64") == 4
    with pytest.raises(ElasticError, match="6n\\+2"):
        model_for_depth("cifar_resnet_20", {}, 30)
    with pytest.raises(ElasticError, match="no elastic family"):
        model_depth("vit_tiny")
