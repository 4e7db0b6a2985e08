"""The compiled extension: when the build made ``_C`` it must import, and every op ``lth info`` lists with a
compiled backend must be in it. Without these checks a broken build only logs a warning and the compiled kernels'
tests skip while the run stays green."""

import torch

from lth_kernels import _ext, info
from lth_kernels.ops import _registry


def test_the_built_extension_imports():
    if _ext.skipped:  # the user asked for the pure-Python path
        assert _ext.C is None and "LTH_KERNELS_SKIP_C=1" in _ext.load_error
        return
    if not _ext.was_built():  # a pure-Python install (LTH_KERNELS_SKIP_BUILD=1): nothing to load
        assert _ext.C is None and _ext.build_record() is None
        return
    assert _ext.C is not None, f"lth_kernels._C was built but does not import: {_ext.load_error}"
    record = _ext.build_record()
    if record is not None:  # what setup.py wrote after the build is what the loaded module reports
        assert _ext.build_info() == record["build_info"]


def _compiled_rows(facts):
    """(op, backend, the registry entry, the row `lth info` prints on that backend's own device)."""
    for name, per_device in facts["ops"].items():
        entry = _registry.ops()[name]
        for backend in ("cpu", "cuda"):
            if backend in entry.impls:
                yield name, backend, entry, per_device[backend]["backends"][backend]


def test_every_compiled_op_lth_info_lists_is_in_the_extension():
    facts = info.collect()
    rows = list(_compiled_rows(facts))
    assert {(n, b) for n, b, _, _ in rows} >= {("pack_mask", "cpu"), ("cpu_sparse_linear", "cpu"),
                                              ("gather_tokens", "cuda")}
    if _ext.C is None:
        assert "error" in facts["extension"]
        assert all(row.startswith("off: lth_kernels._C not built") for *_, row in rows)
        return
    assert facts["extension"] == _ext.build_info()
    for name, backend, entry, row in rows:
        needs = entry.needs.get(backend)
        assert needs, f"{name}: the {backend} backend must name the compiled op it calls"
        if backend == "cpu":
            assert row == "ok", f"{name} on cpu: {row}"
        elif not _ext.has_cuda():
            assert row == "off: lth_kernels._C built without CUDA sources", f"{name} on cuda: {row}"
            continue
        else:
            assert row in ("ok", "off: no CUDA device"), f"{name} on cuda: {row}"
        # the op exists and has a kernel for the backend's dispatch key (checked without a GPU as well)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lth_kernels_C::{needs}", backend.upper()), \
            f"_C has no {backend} kernel for {needs}"
