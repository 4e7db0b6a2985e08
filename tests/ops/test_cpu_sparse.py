"""cpu_sparse: CSR build and CSR x dense inference on every live backend against a float64 dense oracle."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from lth_kernels.ops import _registry
from lth_kernels.ops import cpu_sparse as cs
from lth_kernels.ops.cpu_sparse import SparseWeight, cpu_sparse_linear

from ..conftest import assert_close, require_live

BACKENDS = ["reference", "cpu"]
SHAPES = [(1, 1), (7, 1), (1, 7), (97, 129), (129, 97), (33, 768)]  # (out_features, in_features)
BATCHES = [(1,), (2,), (3,), (8,), (13,), (64,), (65,), (2, 5), (3, 1, 7)]


def _live(backend):
    for op in ("csr_from_dense", "cpu_sparse_linear"):
        require_live(op, backend, "cpu")


def _masks(shape):
    yield torch.zeros(shape, dtype=torch.bool)
    yield torch.ones(shape, dtype=torch.bool)
    for p in (0.5, 0.9, 0.99):
        yield torch.rand(shape) > p


def _oracle(x, weight, mask, bias):
    w = (weight * mask).double()
    return F.linear(x.double(), w, None if bias is None else bias.double())


def _csr_oracle(weight, mask):
    """CSR of ``weight * mask`` built row by row (the definition, independent of the reference's cumsum and
    whole-matrix ``nonzero``): each row's kept columns ascending, their values, and the running count."""
    row_ptr, cols, vals = [0], [], []
    for w_row, m_row in zip(weight.tolist(), mask.tolist()):
        kept = [j for j, keep in enumerate(m_row) if keep]
        cols += kept
        vals += [w_row[j] for j in kept]
        row_ptr.append(len(cols))
    return (torch.tensor(row_ptr, dtype=torch.int64), torch.tensor(cols, dtype=torch.int32),
            torch.tensor(vals, dtype=torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_csr_layout(backend, shape):
    _live(backend)
    for mask in _masks(shape):
        weight = torch.randn(shape)
        sw = SparseWeight.from_dense(weight, mask, backend=backend)
        ref = _csr_oracle(weight, mask)
        assert sw.row_ptr.dtype == torch.int64 and sw.col_idx.dtype == torch.int32 and sw.values.dtype == torch.float32
        for got, want in zip((sw.row_ptr, sw.col_idx, sw.values), ref, strict=True):
            assert torch.equal(got, want)
        assert sw.nnz == int(mask.sum()) and sw.shape == shape
        assert torch.equal(sw.to_dense(), weight * mask)


def test_csr_reference_hand_case():
    weight = torch.arange(12, dtype=torch.float32).view(3, 4)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    row_ptr, col_idx, values = cs.csr_from_dense_reference(weight, mask)
    assert row_ptr.tolist() == [0, 2, 2, 4] and col_idx.tolist() == [0, 3, 1, 2]
    assert values.tolist() == [0.0, 3.0, 9.0, 10.0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_matches_oracle(backend, shape):
    _live(backend)
    n, k = shape
    for i, mask in enumerate(_masks(shape)):
        weight, bias = torch.randn(shape), torch.randn(n)
        sw = SparseWeight.from_dense(weight, mask, backend=backend)
        for batch in BATCHES:
            x = torch.randn(*batch, k)
            b = bias if (i + len(batch)) % 2 else None
            y = cpu_sparse_linear(x, sw, b, backend=backend)
            assert y.shape == (*batch, n) and y.dtype == torch.float32
            assert_close(y, _oracle(x, weight, mask, b), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_full_size_and_empty_rows(backend):
    _live(backend)
    n, k = 768, 3072
    weight, bias = torch.randn(n, k), torch.randn(n)
    mask = torch.rand(n, k) > 0.9
    mask[:, 5] = True
    mask[:, 100:300] = False  # empty columns
    mask[::7] = False  # empty rows: the output is the bias
    sw = SparseWeight.from_dense(weight, mask, backend=backend)
    for batch in (1, 2, 3, 17, 64, 130):
        x = torch.randn(batch, k)
        y = cpu_sparse_linear(x, sw, bias, backend=backend)
        assert_close(y, _oracle(x, weight, mask, bias), torch.float32)
        assert torch.equal(y[:, ::7], bias[::7].expand(batch, -1))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_thread_counts(threads):
    # Big enough for the kernel to go parallel (gather and packed paths); 3 threads: uneven work splits.
    _live("cpu")
    n, k = 389, 1031
    weight, bias = torch.randn(n, k), torch.randn(n)
    mask = torch.rand(n, k) > 0.6
    mask[:, ::5] = False  # empty columns
    mask[3::11] = False  # empty rows
    sw = SparseWeight.from_dense(weight, mask)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 2, 9, 70):
            x = torch.randn(batch, k)
            assert_close(cpu_sparse_linear(x, sw, bias, backend="cpu"), _oracle(x, weight, mask, bias), torch.float32)
    finally:
        torch.set_num_threads(before)


def _sell_parts(blob: torch.Tensor, n: int, k: int):
    """(perm, slice_ptr, idx (columns, 8), val (columns, 8)) read from the kernel's buffer, as
    csrc/cpu/cpu_sparse.h lays it out: slice_ptr int64[ns + 1], perm int32[8 ns], then from a 64-byte boundary
    columns of 8 indices (uint16 stored as int16 when k <= 65,536, else int32) followed by their 8 values."""
    ns = -(-n // 8)
    slice_ptr = blob[:8 * (ns + 1)].view(torch.int64)
    perm = blob[8 * (ns + 1):8 * (ns + 1) + 32 * ns].view(torch.int32)
    offset = -(-(8 * (ns + 1) + 32 * ns) // 64) * 64
    isz = 2 if k <= 65536 else 4
    cols = blob[offset:].view(-1, 8 * (isz + 4))
    idx = cols[:, :8 * isz].contiguous().view(torch.int16 if isz == 2 else torch.int32)
    if isz == 2:
        idx = idx.to(torch.int32) & 0xFFFF
    return perm, slice_ptr, idx, cols[:, 8 * isz:].contiguous().view(torch.float32)


def test_sell_layout():
    # Rows sorted longest first within windows of 64, slices of 8 padded to their longest row (value 0).
    _live("cpu")
    n, k = 150, 40
    mask = torch.rand(n, k) < torch.linspace(0.02, 0.9, n).unsqueeze(1)
    mask[7] = False
    weight = torch.randn(n, k)
    sw = SparseWeight.from_dense(weight, mask)
    (blob,) = sw.kernel_arrays()
    assert blob.dtype == torch.uint8
    perm, slice_ptr, idx, val = _sell_parts(blob, n, k)
    assert perm.numel() == 152 and slice_ptr.numel() == 20 and idx.shape == val.shape == (int(slice_ptr[-1]), 8)
    assert sorted(perm[:n].tolist()) == list(range(n)) and perm[n:].tolist() == [-1, -1]
    lengths = mask.sum(1)
    for w0 in range(0, n, 64):
        window = lengths[perm[w0:min(n, w0 + 64)].long()]
        assert torch.equal(window, window.sort(descending=True, stable=True).values)
    dense = torch.zeros(n, k)
    for s in range(19):
        lanes = perm[8 * s:8 * s + 8]
        rows = lanes[lanes >= 0].long()
        width = int(lengths[rows].max()) if rows.numel() else 0
        assert slice_ptr[s + 1] - slice_ptr[s] == width
        block_idx = idx[slice_ptr[s]:slice_ptr[s + 1]].long()
        block_val = val[slice_ptr[s]:slice_ptr[s + 1]]
        for lane, row in enumerate(lanes.tolist()):
            if row >= 0:
                dense[row].index_put_((block_idx[:, lane],), block_val[:, lane], accumulate=True)
    assert torch.equal(dense, weight * mask)  # every kept entry once, padding adds exact zeros
    assert sw.kernel_arrays()[0] is sw.kernel  # built once


@pytest.mark.parametrize("k", [65535, 65536, 65537])
def test_linear_index_width_boundary(k):
    # 16-bit column indices up to K = 65,536 (largest column 65,535), 32-bit above.
    _live("cpu")
    n = 11
    mask = torch.rand(n, k) > 0.999
    mask[:, k - 1] = True  # the largest column index of each width
    mask[:, 0] = True
    mask[4] = False
    weight, bias = torch.randn(n, k), torch.randn(n)
    sw = SparseWeight.from_dense(weight, mask)
    (blob,) = sw.kernel_arrays()
    columns = int(_sell_parts(blob, n, k)[1][-1])
    ns = -(-n // 8)
    assert blob.numel() == -(-(8 * (ns + 1) + 32 * ns) // 64) * 64 + columns * 8 * ((2 if k <= 65536 else 4) + 4)
    idx = _sell_parts(blob, n, k)[2]
    assert int(idx.max()) == k - 1 and int(idx.min()) == 0
    for batch in (1, 3, 9):
        x = torch.randn(batch, k)
        assert_close(cpu_sparse_linear(x, sw, bias), _oracle(x, weight, mask, bias), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_non_contiguous_and_degenerate(backend):
    _live(backend)
    n, k = 97, 129
    weight, bias = torch.randn(n, k), torch.randn(n)
    mask = torch.rand(n, k) > 0.5
    sw = SparseWeight.from_dense(weight, mask, backend=backend)
    base = torch.randn(40, 2 * k)
    views = [base[:, ::2], base[::3, :k], base[:, k:], torch.randn(k, 9).t(), torch.randn(4, 6, k).transpose(0, 1)]
    for x in views:
        assert_close(cpu_sparse_linear(x, sw, bias, backend=backend), _oracle(x, weight, mask, bias), torch.float32)
    empty = torch.randn(0, k)
    assert cpu_sparse_linear(empty, sw, bias, backend=backend).shape == (0, n)
    # K = 0: nothing to sum, the output is the bias.
    sw0 = SparseWeight.from_dense(torch.randn(5, 0), torch.zeros(5, 0, dtype=torch.bool), backend=backend)
    assert torch.equal(cpu_sparse_linear(torch.randn(3, 0), sw0, bias[:5], backend=backend), bias[:5].expand(3, 5))


_PATH_CHECK = """
import sys
import torch, torch.nn.functional as F
from lth_kernels.ops.cpu_sparse import SparseWeight, cpu_sparse_linear
isa = torch.ops.lth_kernels_C.cpu_sparse_isa()
assert isa == sys.argv[1], (isa, sys.argv[1])
torch.manual_seed(0)
# the lanes path (1-2 rows), AVX2 packed blocks of 8 and 16, AVX-512 blocks of 16 and 32, two blocks with a short
# last one, batches of several blocks; uint16 and int32 indices (K > 65,536); N not a multiple of 8 or of 64, and
# N = 1024 (rows of Y 4 KiB apart: the output goes through a local buffer)
for n, k in ((37, 53), (131, 300), (1024, 24), (9, 70001)):
    weight, bias = torch.randn(n, k), torch.randn(n)
    mask = torch.rand(n, k) > (0.6 if k < 1000 else 0.999)
    mask[3] = False
    sw = SparseWeight.from_dense(weight, mask)
    for batch in (1, 2, 3, 9, 16, 17, 33, 70):
        x = torch.randn(batch, k)
        want = F.linear(x.double(), (weight * mask).double(), bias.double())
        torch.testing.assert_close(cpu_sparse_linear(x, sw, bias).double(), want, atol=1e-4, rtol=1e-4)
        want = F.linear(x.double(), (weight * mask).double())
        torch.testing.assert_close(cpu_sparse_linear(x, sw).double(), want, atol=1e-4, rtol=1e-4)
print("ok")
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


_FLAGS = _cpu_flags()
_X86 = {"avx2", "fma"} <= _FLAGS


@pytest.mark.parametrize("isa_env,lanes_env,want", [
    ("generic", "", "generic"),
    ("avx2", "gather", "avx2+gather"),
    ("avx2", "blend", "avx2+blend"),
    ("avx2", "insert", "avx2+insert"),
    ("avx512", "gather", "avx512+gather"),
])
def test_every_instruction_path_matches_oracle(isa_env, lanes_env, want):
    # Each path the kernel can take, forced through LTH_KERNELS_CPU_ISA / LTH_KERNELS_CPU_LANES (read once per
    # process, hence a subprocess each): the portable one CPUs without AVX2 run, the three AVX2 lanes fetches
    # that a timing picks from per CPU, the AVX2 and AVX-512 packed kernels.
    _live("cpu")
    if want != "generic" and not _X86:
        pytest.skip("needs an x86 CPU with AVX2 and FMA")
    if want.startswith("avx512") and "avx512f" not in _FLAGS:
        pytest.skip("needs a CPU with AVX-512F")
    import subprocess
    import sys

    env = {**os.environ, "LTH_KERNELS_CPU_ISA": isa_env, "LTH_KERNELS_CPU_LANES": lanes_env}
    out = subprocess.run([sys.executable, "-c", _PATH_CHECK, want], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_output_is_an_ordinary_tensor_in_and_out_of_inference_mode():
    # The binding allocates Y without the dispatcher: it must still come out as what F.linear gives in each mode
    # (an inference tensor under inference_mode, else a plain one that later ops and autograd accept).
    _live("cpu")
    weight, bias = torch.randn(10, 7), torch.randn(10)
    mask = torch.rand(10, 7) > 0.4
    sw = SparseWeight.from_dense(weight, mask)
    x = torch.randn(3, 7)
    with torch.inference_mode():
        for xi in (x, x.reshape(1, 3, 7)):  # 2-D and N-D outputs are allocated apart
            y = cpu_sparse_linear(xi, sw, bias)
            assert y.is_inference() and not y.requires_grad and y.shape == (*xi.shape[:-1], 10)
    y = cpu_sparse_linear(x, sw, bias)
    assert not y.is_inference() and not y.requires_grad and y.is_contiguous() and y.shape == (3, 10)
    scale = torch.ones(1, requires_grad=True)
    (y.add_(1.0) * scale).sum().backward()
    assert_close(scale.grad, (_oracle(x, weight, mask, bias) + 1.0).sum().reshape(1), torch.float32)


def test_default_mask_is_nonzeros_and_backend_choice():
    weight = torch.randn(9, 11) * (torch.rand(9, 11) > 0.6)
    sw = SparseWeight.from_dense(weight)
    assert sw.nnz == int((weight != 0).sum())
    assert 0.0 < sw.sparsity < 1.0
    x = torch.randn(4, 11)
    assert_close(cpu_sparse_linear(x, sw), _oracle(x, weight, weight != 0, None), torch.float32)


def test_bad_inputs():
    weight, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.5
    sw = SparseWeight.from_dense(weight, mask)
    cases = [
        (lambda: SparseWeight.from_dense(weight.double(), mask), TypeError, "weight: expected a 2-D torch.float32"),
        (lambda: SparseWeight.from_dense(weight, mask.float()), TypeError, "mask: expected a torch.bool"),
        (lambda: SparseWeight.from_dense(weight, mask.t()), ValueError, r"mask: expected shape \(6, 5\)"),
        (lambda: cpu_sparse_linear(torch.randn(3, 5).double(), sw), TypeError, "x: expected a torch.float32"),
        (lambda: cpu_sparse_linear(torch.randn(3, 4), sw), ValueError, r"x: expected shape \(\.\.\., 5\)"),
        (lambda: cpu_sparse_linear(torch.randn(3, 5), sw, torch.randn(5)), ValueError, r"bias: expected .* \(6,\)"),
        (lambda: cpu_sparse_linear(torch.randn(3, 5), weight), TypeError, "sparse_weight: expected a SparseWeight"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            fn()
        assert "\n" not in str(info.value)


def test_compiled_op_checks():
    _live("cpu")
    sw = SparseWeight.from_dense(torch.randn(6, 5), backend="cpu")
    C = torch.ops.lth_kernels_C
    (blob,) = sw.kernel_arrays()
    with pytest.raises(RuntimeError, match="x: expected dtype Float"):
        C.cpu_sparse_linear(torch.randn(2, 5).double(), blob, 5, 6, None)
    with pytest.raises(RuntimeError, match="blob: expected .* bytes"):
        C.cpu_sparse_linear(torch.randn(2, 5), blob, 5, 17, None)
    with pytest.raises(RuntimeError, match="blob: expected .* bytes .* in_features=70000"):
        C.cpu_sparse_linear(torch.randn(2, 70000), blob, 70000, 6, None)
    with pytest.raises(RuntimeError, match="blob: expected dtype Byte"):
        C.cpu_sparse_linear(torch.randn(2, 5), blob.view(torch.int32), 5, 6, None)
    with pytest.raises(RuntimeError, match="bias: expected shape"):
        C.cpu_sparse_linear(torch.randn(2, 5), blob, 5, 6, torch.zeros(5))
    with pytest.raises(RuntimeError, match="row_ptr: must run from 0 to nnz"):
        C.sell_from_csr(sw.row_ptr + 1, sw.col_idx, sw.values, 5)
    with pytest.raises(RuntimeError, match=r"mask: expected the weight's shape"):
        C.csr_from_dense(torch.randn(6, 5), torch.ones(5, 6, dtype=torch.bool))


def test_eager_calls_take_the_direct_binding_only_where_the_kernel_is_chosen(monkeypatch):
    # The direct binding (no dispatcher) serves eager calls that resolve to the compiled kernel; a backend
    # argument, LTH_KERNELS_BACKEND or a re-ordered preference that picks the reference keeps it out.
    _live("cpu")
    weight, bias = torch.randn(19, 23), torch.randn(19)
    mask = torch.rand(19, 23) > 0.7
    sw = SparseWeight.from_dense(weight, mask)
    calls = []
    direct = cs._DIRECT
    monkeypatch.setattr(cs, "_DIRECT", lambda *a: calls.append(a) or direct(*a))
    x = torch.randn(3, 23)
    y = cpu_sparse_linear(x, sw, bias)
    assert len(calls) == 1 and calls[0][1] is sw.kernel
    assert_close(y, _oracle(x, weight, mask, bias), torch.float32)
    assert torch.equal(y, torch.ops.lth_kernels_C.cpu_sparse_linear(x, sw.kernel, 23, 19, bias))
    cpu_sparse_linear(x, sw, bias, backend="reference")
    monkeypatch.setenv("LTH_KERNELS_BACKEND", "cpu_sparse_linear=reference")
    cpu_sparse_linear(x, sw, bias)
    monkeypatch.delenv("LTH_KERNELS_BACKEND")
    assert len(calls) == 1
    monkeypatch.setitem(_registry._OPS["cpu_sparse_linear"].preference, "cpu", ("reference",))
    _registry._RESOLVED.clear()
    try:
        cpu_sparse_linear(x, sw, bias)
        assert len(calls) == 1
    finally:
        _registry._RESOLVED.clear()
    # A bad argument fails in the binding, then the Python checks name it (one line, the documented type).
    with pytest.raises(TypeError, match="x: expected a torch.float32"):
        cpu_sparse_linear(x.double(), sw, bias)
    with pytest.raises(ValueError, match="x: expected device"):
        cpu_sparse_linear(x.to("meta"), sw, bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    _live(backend)
    weight = torch.randn(7, 9)
    sw = SparseWeight.from_dense(weight, torch.rand(7, 9) > 0.5, backend=backend)
    x, bias = torch.randn(3, 9), torch.randn(7)
    arrays = [sw.row_ptr, sw.col_idx, sw.values] if backend == "reference" else list(sw.kernel_arrays())
    torch.library.opcheck(cs._cpu_sparse_linear_op, (x, arrays, 9, 7, bias, backend),
                          test_utils=("test_schema", "test_faketensor"))


def test_table_lookup(tmp_path):
    entries = [{"batch": b, "in_features": k, "out_features": n, "crossover": c}
               for b, c0 in ((1, 0.5), (8, 0.7), (64, 0.85))
               for (k, n), c in (((768, 3072), c0), ((64, 256), c0 + 0.1))]
    table = {"machine": {}, "entries": entries}
    assert cs.crossover(1, 768, 3072, table) == 0.5
    assert cs.crossover(50, 700, 3000, table) == 0.85  # nearest batch and shape
    assert cs.crossover(8, 64, 300, table) == pytest.approx(0.8)
    assert cs.crossover(8, 64, 300, {"entries": []}) == 1.0
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    assert cs.dispatch_table(str(path)) == table
    assert cs.dispatch_table(str(tmp_path / "missing.json")) == {"entries": []}


def test_shipped_table_is_monotone_in_sparsity():
    table = cs.dispatch_table()
    assert table["entries"], "cpu_sparse_table.json is missing or empty: run bench/cpu_sparse.py"
    assert all(0.0 <= e["crossover"] <= 1.0 for e in table["entries"])
    if not _registry.ops()["cpu_sparse_linear"].status("cpu", "cpu")[0]:
        assert not cs.use_sparse_cpu(0.999, 1, 768, 768)  # the table measures the compiled kernel only
        return
    for batch in (1, 4, 8, 33, 64, 500):
        for k, n in ((768, 2304), (3072, 768), (64, 256), (2048, 512)):
            answers = [cs.use_sparse_cpu(s / 100, batch, k, n) for s in range(0, 101)]
            assert answers == sorted(answers), (batch, k, n)  # False ... False True ... True


class _TinyMasked(torch.nn.Linear):
    """The attributes eval_forward relies on (as lth_kernels.nn.MaskedLinear has them)."""

    def __init__(self, k, n, mask):
        super().__init__(k, n)
        self.register_buffer("mask", mask.clone(), persistent=False)
        self.mask_version = 0
        with torch.no_grad():
            self.weight.mul_(mask)

    @torch.no_grad()
    def set_mask(self, mask):
        self.mask.copy_(mask)
        self.weight.mul_(mask)
        self.mask_version += 1


def test_eval_forward_cache_follows_mask_and_weight(monkeypatch):
    monkeypatch.setattr(cs, "use_sparse_cpu", lambda *a, **k: True)  # the kernel, whatever the table says
    layer = _TinyMasked(129, 97, torch.rand(97, 129) > 0.9)
    x = torch.randn(5, 3, 129)
    with torch.no_grad():
        assert_close(cs.eval_forward(layer, x), F.linear(x, layer.weight, layer.bias), torch.float32)
        first = layer.__dict__["_cpu_sparse_weight"][1]
        cs.eval_forward(layer, x)
        assert layer.__dict__["_cpu_sparse_weight"][1] is first  # cached
        layer.set_mask(torch.rand(97, 129) > 0.5)
        assert_close(cs.eval_forward(layer, x), F.linear(x, layer.weight, layer.bias), torch.float32)
        assert layer.__dict__["_cpu_sparse_weight"][1] is not first
    # An optimizer step changes the kept weights in place: the cache must notice (weight._version).
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(4, 129)).square().sum().backward()
    layer.weight.grad.mul_(layer.mask)
    opt.step()
    with torch.no_grad():
        assert_close(cs.eval_forward(layer, x), F.linear(x, layer.weight, layer.bias), torch.float32)


def test_eval_forward_applies_only_to_inference():
    layer = _TinyMasked(768, 768, torch.rand(768, 768) > 0.999)
    x = torch.randn(8, 768)
    layer.train()
    with torch.no_grad():
        assert not cs.eval_forward_applies(layer, x)
    layer.eval()
    assert not cs.eval_forward_applies(layer, x)  # grad enabled and the weight requires grad
    with torch.no_grad():
        assert not cs.eval_forward_applies(layer, x.double())
        assert cs.eval_forward_applies(layer, x)


def _mask_with_sparsity(shape, sparsity):
    mask = torch.ones(shape, dtype=torch.bool).flatten()
    mask[torch.randperm(mask.numel())[:round(sparsity * mask.numel())]] = False
    return mask.view(shape)


def test_uses_kernel_compares_the_layers_sparsity_with_the_crossover_of_its_rows(monkeypatch):
    """The kernel serves a call when the compiled kernel is live and the layer's sparsity reaches the table's
    crossover for (rows of the call, K, N); a fixed crossover of 0.9 stands in for the machine's table."""
    asked = []

    def crossover(batch, k, n):
        asked.append((batch, k, n))
        return 0.9

    monkeypatch.setattr(cs, "_shipped_crossover", crossover)
    live = _registry.ops()["cpu_sparse_linear"].status("cpu", "cpu")[0]
    layer = _TinyMasked(96, 40, _mask_with_sparsity((40, 96), 0.95)).eval()
    with torch.no_grad():
        assert cs.uses_kernel(layer, torch.randn(2, 3, 96)) is live
        if live:
            assert asked[-1] == (6, 96, 40)  # rows: every leading dimension
        n_asked = len(asked)
        assert cs.uses_kernel(layer, torch.randn(6, 96)) is live and len(asked) == n_asked  # cached: same rows, mask
        layer.set_mask(_mask_with_sparsity((40, 96), 0.85))
        assert cs.uses_kernel(layer, torch.randn(5, 96)) is False  # 85 % sparse, below the crossover
        layer.set_mask(_mask_with_sparsity((40, 96), 0.9))
        assert cs.uses_kernel(layer, torch.randn(5, 96)) is live  # at the crossover: the kernel
        conv = torch.nn.Conv2d(96, 40, 1, stride=2)
        conv.register_buffer("mask", _mask_with_sparsity((40, 96, 1, 1), 0.95))
        conv.mask_version = 0
        assert cs.uses_kernel(conv, torch.randn(2, 96, 5, 7)) is live
        if live:
            assert asked[-1] == (2 * 3 * 4, 96, 40)  # a 1x1 conv's rows: its output pixels
        conv3 = torch.nn.Conv2d(96, 40, 3)
        conv3.register_buffer("mask", _mask_with_sparsity((40, 96, 3, 3), 0.99))
        conv3.mask_version = 0
        assert cs.uses_kernel(conv3, torch.randn(1, 96, 5, 5)) is False  # not a GEMM over pixels


_SMALL_TEAM_CHECK = """
import torch, torch.nn.functional as F
from lth_kernels.ops.cpu_sparse import SparseWeight, cpu_sparse_linear
torch.set_num_threads(2)
torch.manual_seed(0)
weight, bias = torch.randn(768, 768), torch.randn(768)
mask = torch.rand(768, 768) > 0.9
sw = SparseWeight.from_dense(weight, mask)
for batch in (1, 8, 64):  # the lanes path, the shared-panel path, whole blocks per thread
    x = torch.randn(batch, 768)
    want = F.linear(x.double(), (weight * mask).double(), bias.double())
    torch.testing.assert_close(cpu_sparse_linear(x, sw, bias).double(), want, atol=1e-4, rtol=1e-4)
print("ok")
"""


def test_a_smaller_thread_team_than_asked_still_computes_every_row():
    # OMP_THREAD_LIMIT=1 gives the kernel a team of one while torch asks for two (as a call from inside another
    # parallel region would): the static split of the slices must follow the team it got, not the request
    _live("cpu")
    import subprocess
    import sys

    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    out = subprocess.run([sys.executable, "-c", _SMALL_TEAM_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
