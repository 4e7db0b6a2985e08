"""The README's Python examples run as written (in a temp dir, so the ticket file lands there)."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"README example failed:\n{code}\n{out.stderr[-2000:]}"


def _ops_table():
    text = README.read_text()
    section = text[text.index("## Ops\n"):]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        python, ops, backends = re.findall(r"`([\w.]+)`", cells[0]), cells[1], cells[3]
        op_names = re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", ops))
        rows.append((python, op_names, {b.strip() for b in backends.split(",")}))
    return rows


def test_ops_table_names_and_backends_are_the_live_ones():
    """Every op of the README's ops table exists under torch.ops.lth_kernels and in `lth info` (the backend
    registry) with exactly the backends listed; every Python name exists; no op is missing from the table."""
    import torch

    import lth_kernels.ops as ops
    from lth_kernels.ops import _registry

    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:  # the triton backends register only where triton imports
        has_triton = False
    rows = _ops_table()
    assert len(rows) >= 9
    listed = set()
    for python, op_names, backends in rows:
        assert backends <= set(_registry.BACKENDS), backends
        for fn in python:
            assert callable(getattr(ops, fn, None)), f"lth_kernels.ops.{fn} does not exist"
        for op in op_names:
            listed.add(op)
            assert hasattr(torch.ops.lth_kernels, op), f"torch.ops.lth_kernels.{op} does not exist"
            if op in _registry.ops():
                have = set(_registry.ops()[op].impls)
                want = backends if has_triton else backends - {"triton"}
                assert have == want, f"{op}: README lists {sorted(want)}, registered {sorted(have)}"
    assert set(_registry.ops()) <= listed, sorted(set(_registry.ops()) - listed)
    torch_ops = {n for n in dir(torch.ops.lth_kernels) if isinstance(getattr(torch.ops.lth_kernels, n),
                                                                      torch._ops.OpOverloadPacket)}
    assert torch_ops <= listed, sorted(torch_ops - listed)
