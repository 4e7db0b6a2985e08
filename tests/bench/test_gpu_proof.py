"""The static GPU proof: compile-only target mode, cubin analysis, verdicts, coverage, pinned configs.

Compiling needs TRITON_INTERPRET unset, which the test session sets, so compile checks run in a child process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import gpu_proof
from bench._cubin import tool as cuobjdump
from lth_kernels.ops import _triton

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A masked-matmul forward at one small config, compiled for both targets through the launcher's own code path.
_COMPILE = r"""
import json, sys, torch
from bench._cubin import analyse_cubin
from lth_kernels.ops import _masked_matmul_triton as mm
from lth_kernels.ops._triton import compile_only
out = {}
for target in ("sm_90a", "sm_80"):
    for dtype in (torch.bfloat16, torch.float32):
        x, w = torch.empty(128, 256, dtype=dtype), torch.empty(192, 256, dtype=dtype)
        with compile_only(target) as records:
            meta = mm.mask_meta(torch.rand(192, 256) < 0.5)  # GPU base tile (64) under the target
            y = mm.masked_matmul_forward(x, w, meta, config={"BLOCK_M": 64, "BLOCK_OUT": 64}, apply_mask=True)
        (rec,) = records
        out[f"{target}/{dtype}"] = {"kernel": rec["kernel"], "meta": rec["meta"], "pinned": rec["pinned"],
                                    "target": rec["compiled"].metadata.target.arch, "shape": list(y.shape),
                                    **analyse_cubin(rec["compiled"].asm["cubin"])}
print(json.dumps(out))
"""


def _child(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    if cuobjdump() is None:
        pytest.skip("cuobjdump not available")
    res = _child(_COMPILE)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_compile_only_compiles_for_each_target_and_launches_nothing(compiled):
    assert {k.split("/")[0] for k in compiled} == {"sm_90a", "sm_80"}
    for key, r in compiled.items():
        assert r["kernel"] == "_masked_mm_kernel" and r["shape"] == [128, 192]
        assert r["target"] == (90 if key.startswith("sm_90a") else 80)
        assert r["meta"]["BLOCK_M"] == 64 and r["meta"]["APPLY_MASK"] is True and r["meta"]["TILE"] == 64
        assert r["regs"] > 0 and r["local"] == 0


def test_tensor_core_instructions_are_counted(compiled):
    # bf16 tl.dot: wgmma on Hopper, mma.sync on Ampere; exact fp32 (no TF32 on CPU tensors) uses neither
    assert compiled["sm_90a/torch.bfloat16"]["hgmma"] > 0
    assert compiled["sm_80/torch.bfloat16"]["hmma"] > 0 and compiled["sm_80/torch.bfloat16"]["hgmma"] == 0
    assert compiled["sm_80/torch.float32"]["hmma"] == 0


def test_compile_only_refuses_the_interpreter_and_unknown_targets():
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    if os.environ.get("TRITON_INTERPRET") == "1":
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), _triton.compile_only("sm_80"):
            pass
    res = _child("from lth_kernels.ops._triton import compile_only\nwith compile_only('sm_75'): pass")
    assert res.returncode != 0 and "target: expected one of" in res.stderr


def _row(**kw):
    base = {"kernel": "_masked_mm_kernel", "dtype": "bfloat16", "meta": {"BLOCK_M": 64, "num_warps": 4,
                                                                           "APPLY_MASK": True},
            "pinned": False, "case": "c", "sha": "a", "regs": 100, "stack": 0, "local": 0, "static_smem": 0,
            "smem": 1000, "hgmma": 4, "hmma": 0}
    return {**base, **kw}


def test_verdicts_fail_on_spills_shared_memory_and_missing_tensor_cores():
    rows = [_row(sha="ok"), _row(sha="spill", local=64), _row(sha="smem", smem=300_000),
            _row(sha="notc", hgmma=0), _row(sha="fp32", dtype="float32", hgmma=0),
            _row(sha="copy", kernel="_gather_tokens_kernel", hgmma=0),
            _row(sha="ok", case="d", pinned=True)]
    v = {r["sha"]: r for r in gpu_proof.variant_rows(rows, "sm_90a")}
    assert v["ok"]["status"] == "ok" and v["ok"]["cases"] == ["c", "d"] and v["ok"]["pinned"]
    assert v["ok"]["config"] == "BLOCK_M=64 num_warps=4" and v["ok"]["flags"] == "APPLY_MASK=True"
    assert v["spill"]["status"].startswith("spills: 64 B")
    assert "shared memory 300000 B > 232448 B" in v["smem"]["status"]
    assert v["notc"]["status"] == "no tensor-core instructions"
    assert v["fp32"]["status"] == "ok" and v["copy"]["status"] == "ok"  # fp32 / non-GEMM kernels need none
    summary = {s["kernel"]: s for s in gpu_proof.kernel_summary(list(v.values()))}
    assert summary["_masked_mm_kernel"]["failures"] == 3 and summary["_masked_mm_kernel"]["max_spill_bytes"] == 64


def test_coverage_follows_helpers_through_the_kernels_that_call_them():
    functions = {"_a_kernel": "def _a_kernel(x):\n    return _helper(x)\n", "_helper": "def _helper(x):\n    return x",
                 "_b_kernel": "def _b_kernel(x):\n    return _orphan_helper2(x)\n", "_orphan": "def _orphan(): pass"}
    assert gpu_proof.uncovered(functions, {"_a_kernel"}) == ["_b_kernel", "_orphan"]


def test_every_package_jit_function_is_a_kernel_or_a_reachable_helper():
    pytest.importorskip("triton")
    functions = gpu_proof.package_functions()
    kernels = {f for f in functions if f.endswith("_kernel")}
    assert {"_masked_mm_kernel", "_attn_fwd_kernel", "_dds_kernel", "_pack_mask_kernel"} <= kernels
    assert gpu_proof.uncovered(functions, kernels) == []  # every helper is called by some kernel
    assert kernels >= gpu_proof.GEMM_KERNELS


def test_pinned_config_survives_the_shared_memory_prune(monkeypatch):
    pytest.importorskip("triton")
    from lth_kernels.ops import _masked_matmul_triton as mm

    monkeypatch.setattr(_triton, "_target", _triton.TARGETS["sm_80"])
    tuned = mm._masked_mm_tuned
    for dtype, want_pinned in ((torch.bfloat16, True), (torch.float32, False)):
        args = {"a_ptr": torch.empty(1, dtype=dtype), "TILE": 64}
        kept = tuned.pruned((), args)
        limit = _triton.TARGETS["sm_80"].smem_per_block
        assert kept and all(c.num_stages * (c.kwargs["BLOCK_M"] * 64 + 64 * c.kwargs["BLOCK_OUT"])
                            * args["a_ptr"].element_size() <= limit for c in kept)
        pin = tuned.pinned_config((), args)
        assert (pin is tuned.pinned) == want_pinned and pin in kept  # fp32 on sm_80: the first config that fits


@pytest.mark.parametrize("target", ["sm_90a", "sm_80"])
def test_tiles_that_spill_are_dropped_where_they_spill(monkeypatch, target):
    # the full tier found these variants spilling: a call of that dtype on that architecture never autotunes over
    # them (the masked forward only with the mask applied), other dtypes keep them, the pinned config stays
    pytest.importorskip("triton")
    from lth_kernels.ops import _block_sparse_triton as bst
    from lth_kernels.ops import _masked_matmul_triton as mm

    monkeypatch.setattr(_triton, "_target", _triton.TARGETS[target])
    arch = 90 if target == "sm_90a" else 80
    cases = ((mm._masked_mm_tuned, ("BLOCK_M", "BLOCK_OUT"), mm._MM_SPILLS, {"TILE": 64, "APPLY_MASK": True}),
             (mm._grad_weight_tuned, ("BLOCK_N", "BLOCK_K", "BLOCK_M"), mm._GW_SPILLS, {}),
             (bst._dds_tuned, ("BLOCK_M", "BK"), bst._DDS_SPILLS, {"BQ": 64, "BP": 64, "M": 4096, "PRECISION": "tf32"}))
    for tuned, fields, spills, extra in cases:
        operand = tuned.smem[0]

        def keys(dtype, tuned=tuned, fields=fields, operand=operand, extra=extra, **kw):
            return {(*(c.kwargs[f] for f in fields), c.num_stages, c.num_warps)
                    for c in tuned.pruned((), {operand: torch.empty(1, dtype=dtype), **extra, **kw})}

        everything = {(*(c.kwargs[f] for f in fields), c.num_stages, c.num_warps) for c in tuned.configs}
        for dtype in (torch.bfloat16, torch.float16):
            drop = spills.get(arch, {}).get(dtype, set()) | spills.get(arch, {}).get("*", set())
            assert not keys(dtype) & drop and drop <= everything
            assert tuned.pinned_config((), {operand: torch.empty(1, dtype=dtype), **extra}) is tuned.pinned
        assert keys(torch.float16) - keys(torch.bfloat16) == spills.get(arch, {}).get(torch.bfloat16, set())


@pytest.mark.parametrize("target", ["sm_90a", "sm_80"])
def test_exact_fp32_gets_its_own_configs(monkeypatch, target):
    # exact fp32 has no tensor cores: the tensor-core tiles spill there, so "ieee" on fp32 operands picks the
    # exact list (its first config pinned); TF32 and 16-bit operands ("ieee" is ignored for them) keep the others
    pytest.importorskip("triton")
    from lth_kernels.ops import _block_sparse_triton as bst
    from lth_kernels.ops import _masked_matmul_triton as mm

    monkeypatch.setattr(_triton, "_target", _triton.TARGETS[target])
    for tuned, prec, extra in ((mm._masked_mm_tuned, "INPUT_PRECISION", {"TILE": 64}),
                               (mm._grad_weight_tuned, "INPUT_PRECISION", {}),
                               (bst._dds_tuned, "PRECISION", {"BQ": 128, "BP": 128, "M": 4096}),
                               (bst._sdd_tuned, "PRECISION", {"BM": 128, "BN": 128})):
        operand = tuned.smem[0]
        exact = tuned.pruned((), {operand: torch.empty(1), prec: "ieee", **extra})
        ids = {id(c) for c in tuned.exact}  # Config compares by value; some configs are in both lists
        assert exact and all(id(c) in ids for c in exact)
        assert tuned.pinned_config((), {operand: torch.empty(1), prec: "ieee", **extra}) is exact[0]
        for dtype, p in ((torch.float32, "tf32"), (torch.bfloat16, "ieee")):
            kept = tuned.pruned((), {operand: torch.empty(1, dtype=dtype), prec: p, **extra})
            assert kept and not any(id(c) in ids for c in kept)


def test_attention_tiles_follow_the_target_and_the_mask_block(monkeypatch):
    pytest.importorskip("triton")
    from lth_kernels.ops import _sparse_attention_triton as sat

    for target, cap in (("sm_90a", 90), ("sm_80", 80)):
        monkeypatch.setattr(_triton, "_target", _triton.TARGETS[target])
        for dtype, fp32 in ((torch.bfloat16, False), (torch.float32, True)):
            for d in (64, 128):
                want = dict(zip(sat.KERNELS, sat._TILES[(cap, fp32, d)]))
                assert sat.tiles(dtype, d, None, torch.device("cpu")) == want  # dense, and 128-blocks: the table
                assert sat.tiles(dtype, d, (128, 128), torch.device("cpu")) == want
                for kernel, (tm, tn, warps, stages) in sat.tiles(dtype, d, (16, 32), torch.device("cpu")).items():
                    full = want[kernel]
                    assert (tm, tn) == (min(full[0], 16), min(full[1], 32)) and stages == full[3]
                    assert warps == (full[2] if (tm, tn) == full[:2] else min(full[2], 4))
    monkeypatch.setattr(_triton, "_target", None)
    if not _triton.INTERPRET:
        pytest.skip("the interpreter tiles apply under TRITON_INTERPRET=1")
    assert {t[:2] for t in sat.tiles(torch.float32, 64, (32, 32), torch.device("cpu")).values()} == {(16, 16)}
