"""The Makefile passes TORCH_CUDA_ARCH_LIST to setup.py only when the user gives it (setup.py's default, the
visible GPUs, must apply under `make`)."""

import os
import pathlib
import shutil
import subprocess

import pytest

MAKEFILE = pathlib.Path(__file__).resolve().parents[1] / "Makefile"
PROBE = 'probe:\n\t@echo "[$$TORCH_CUDA_ARCH_LIST] [$$MAX_JOBS]"\n'


def _probe(env_arch, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "MAKEFLAGS")}
    if env_arch is not None:
        env["TORCH_CUDA_ARCH_LIST"] = env_arch
    out = subprocess.run(["make", "-s", "-f", str(MAKEFILE), "-f", "-", "probe", *args], input=PROBE, env=env,
                         capture_output=True, text=True, timeout=60, cwd=MAKEFILE.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_arch_list_only_when_given():
    assert _probe(None) == "[] [2]"
    assert _probe("7.5") == "[7.5] [2]"
    assert _probe(None, "TORCH_CUDA_ARCH_LIST=8.6") == "[8.6] [2]"
