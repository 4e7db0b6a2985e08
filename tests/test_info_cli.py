"""`lth info` and the CLI front: they must work on a machine without a GPU and without _C."""

import json
import os
import subprocess
import sys

from lth_kernels import cli, info


def test_info_lists_every_op_with_a_reason_per_backend():
    facts = info.collect()
    assert facts["torch"] and "extension" in facts
    for name in ("pack_mask", "unpack_mask", "tile_occupancy"):
        per_device = facts["ops"][name]
        assert set(per_device) == {"cpu", "cuda"}
        assert per_device["cpu"]["backends"]["reference"] == "ok"
        for backend, why in per_device["cuda"]["backends"].items():
            assert why, backend  # every backend says why it is on or off
    text = info.format_info(facts)
    assert "pack_mask" in text and "torch" in text


def test_info_prints_the_dispatch_rule_of_each_layer_family():
    facts = info.collect()
    rule = facts["ops"]["masked_linear"]["cuda"]["rule"]
    assert "masked_matmul_table.json" in rule and "triton" in rule and "reference" in rule
    assert facts["ops"]["masked_linear"]["cpu"]["rule"] is None  # CPU: the library, no per-call choice
    layers = facts["layers"]
    assert set(layers) >= {"MaskedLinear", "MaskedConv2d", "ScoredLinear, ScoredConv2d"}
    assert "block_sparse_linear" in layers["MaskedLinear"] and "semi_structured_linear" in layers["MaskedLinear"]
    assert "no Triton convolution" in layers["MaskedConv2d"]
    text = info.format_info(facts)
    assert "auto rule:" in text and "MaskedConv2d: masked_conv2d -> reference" in text


def test_info_json_cli(capsys):
    assert cli.main(["info", "--json"]) == 0
    assert "ops" in json.loads(capsys.readouterr().out)


def test_unknown_command_is_one_line_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "frobnicate" in err and "info" in err


def test_package_imports_without_extension():
    env = dict(os.environ, LTH_KERNELS_SKIP_C="1")
    code = (
        "import torch, lth_kernels._ext as e, lth_kernels.ops as o; m = torch.rand(3, 40) > .5;"
        "print(o.pack_mask(m).shape, e.load_error, o.resolve('pack_mask', 'cpu'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([3, 2])" in out.stdout
    assert "LTH_KERNELS_SKIP_C=1" in out.stdout and out.stdout.strip().endswith("reference")
