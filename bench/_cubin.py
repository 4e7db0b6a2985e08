"""Reads GPU binaries without a GPU: registers, local memory (spills), shared memory and the tensor-core
instruction mix, from ``cuobjdump`` (shipped with Triton in ``triton/backends/nvidia/bin``, or on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

_FUNC = re.compile(r"^\s*Function (\S+?):?\s*$")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ARCH = re.compile(r"arch = (sm_\w+)")
_SASS_FUNC = re.compile(r"^\s*Function : (\S+)")
# SASS mnemonics: HGMMA = Hopper warpgroup MMA (wgmma), HMMA = warp-level MMA (mma.sync; sm_80 and fallback on sm_90)
TENSOR_OPS = ("HGMMA", "HMMA")
_MNEMONIC = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)")


def tool(name: str = "cuobjdump") -> str | None:
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    return shutil.which(name)


def _run(args: list[str]) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(args[0])} failed ({out.returncode}): {out.stderr.strip()[:300]}")
    return out.stdout


def _dump(flag: str, path: str, arch: str | None):
    """(arch, line) over cuobjdump's output; a fatbin names each embedded ELF's arch before its kernels."""
    exe = tool()
    if exe is None:
        raise RuntimeError("cuobjdump: not found (Triton's NVIDIA backend ships one; is Triton installed?)")
    current = arch or ""
    for line in _run([exe, flag, *(["-arch", arch] if arch else []), path]).splitlines():
        if m := _ARCH.search(line):
            current = m.group(1)
        yield current, line


def resource_usage(path: str, arch: str | None = None) -> dict[tuple[str, str], dict]:
    """{(arch, function): {"regs", "stack", "static_smem", "local"}} of every kernel in a cubin / fatbin / .so."""
    usage, func = {}, None
    for cur_arch, line in _dump("--dump-resource-usage", path, arch):
        if m := _FUNC.match(line):
            func = m.group(1)
        elif func and (m := _USAGE.search(line)):
            regs, stack, shared, local = map(int, m.groups())
            usage[(cur_arch, func)] = {"regs": regs, "stack": stack, "static_smem": shared, "local": local}
            func = None
    return usage


def instruction_mix(path: str, arch: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """{(arch, function): {mnemonic: count}} from the SASS of every kernel."""
    mix, counts = {}, None
    for cur_arch, line in _dump("-sass", path, arch):
        if m := _SASS_FUNC.match(line):
            counts = mix.setdefault((cur_arch, m.group(1)), {})
        elif counts is not None and (m := _MNEMONIC.search(line)):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return mix


def analyse_cubin(cubin: bytes) -> dict:
    """Resources and tensor-core instruction counts of a single-kernel cubin (Triton's output)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        usage = list(resource_usage(path).values())
        mix = list(instruction_mix(path).values())
    finally:
        os.unlink(path)
    if len(usage) != 1:
        raise RuntimeError(f"cuobjdump: expected one kernel in the cubin, found {len(usage)}")
    counts = mix[0] if mix else {}
    return {**usage[0], **{op.lower(): counts.get(op, 0) for op in TENSOR_OPS}}
