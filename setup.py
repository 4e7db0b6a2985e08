"""Builds lth_kernels._C from csrc/ (kernels) and python/ (bindings).

    CPU C++ (OpenMP, -O3) ............................ always
    + CUDA sources (csrc/cuda/*.cu) .................. LTH_KERNELS_CUDA=1, or unset and torch has CUDA
                                                       and a CUDA toolkit is found; LTH_KERNELS_CUDA=0 skips
    archs ............................................ TORCH_CUDA_ARCH_LIST, default "8.0;9.0a" without a GPU
    -march=native .................................... LTH_KERNELS_NATIVE=1 only (wheels must run elsewhere)
    parallel compile jobs ............................ MAX_JOBS, default: the core count
    no extension at all .............................. LTH_KERNELS_SKIP_BUILD=1 (pure-Python install)

Install with ``pip install --no-build-isolation -e .`` so that the build uses the torch already installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def say(msg: str) -> None:
    print(f"[lth_kernels setup] {msg}", flush=True)


def find_cuda_home() -> str | None:
    """A directory holding bin/nvcc and include/cuda_runtime.h.

    torch's own detection follows `nvcc` on PATH to its grandparent, which is wrong when `nvcc` is a wrapper
    script outside the toolkit; so look for the headers before trusting a candidate.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(c, "bin", "nvcc")
        ):
            return c
    return None


def extensions():
    if os.environ.get("LTH_KERNELS_SKIP_BUILD") == "1":
        say("LTH_KERNELS_SKIP_BUILD=1: no compiled extension (references and Triton only)")
        return [], {}

    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    want = os.environ.get("LTH_KERNELS_CUDA", "").strip()
    if want == "0":
        with_cuda, why = False, "LTH_KERNELS_CUDA=0"
    elif want == "1":
        if cuda_home is None:
            sys.exit("[lth_kernels setup] LTH_KERNELS_CUDA=1 but no CUDA toolkit found: set CUDA_HOME")
        if torch.version.cuda is None:
            sys.exit(f"[lth_kernels setup] LTH_KERNELS_CUDA=1 but torch {torch.__version__} is a CPU build")
        with_cuda, why = True, "LTH_KERNELS_CUDA=1"
    elif torch.version.cuda is None:
        with_cuda, why = False, f"torch {torch.__version__} is a CPU build"
    elif cuda_home is None:
        with_cuda, why = False, "no CUDA toolkit found (set CUDA_HOME)"
    else:
        with_cuda, why = True, f"torch has CUDA {torch.version.cuda} and a toolkit is at {cuda_home}"

    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" + ("a" if a == 9 else "") for a, b in caps)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    native = os.environ.get("LTH_KERNELS_NATIVE") == "1"

    say(f"CUDA sources: {'yes' if with_cuda else 'no'} ({why})")
    if with_cuda:
        say(f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    say(f"MAX_JOBS={os.environ['MAX_JOBS']}, -march=native: {'yes' if native else 'no (LTH_KERNELS_NATIVE=1)'}")

    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + sorted(glob.glob("python/*.cpp"))
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))

    gen_dir = os.path.join(ROOT, "build", "gen")
    os.makedirs(gen_dir, exist_ok=True)
    info = {
        "with_cuda": "1" if with_cuda else "0",
        "cuda_decision": why,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "archs": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        "compiler": compiler_version(),
        "native": "1" if native else "0",
    }
    write_build_info(os.path.join(gen_dir, "build_info.h"), info)

    cxx = ["-O3", "-fopenmp"] + (["-march=native"] if native else [])
    macros = [("LTH_WITH_CUDA", "1")] if with_cuda else []
    kwargs = dict(
        name="lth_kernels._C",
        sources=sources,
        include_dirs=[gen_dir, os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
    ext = CUDAExtension(**kwargs) if with_cuda else CppExtension(**{**kwargs, "extra_compile_args": cxx})

    class BuildAndRecord(BuildExtension.with_options(use_ninja=True)):
        """Writes ``_build_info.json`` beside the built extension once the build succeeded: the tests then know
        that ``_C`` must import (a silent pure-Python fallback would otherwise skip the compiled kernels' tests)."""

        def run(self):
            super().run()
            path = self.get_ext_fullpath("lth_kernels._C")
            write_build_record(os.path.join(os.path.dirname(path), "_build_info.json"), os.path.basename(path), info)

    return [ext], {"build_ext": BuildAndRecord}


def compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return cxx


def write_build_record(path: str, extension: str, info: dict[str, str]) -> None:
    import json

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"extension": extension, "build_info": info}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_build_info(path: str, info: dict[str, str]) -> None:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace('"', '\\"')

    body = "\n".join(f'    {{"{esc(k)}", "{esc(v)}"}},' for k, v in info.items())
    text = (
        "// Generated by setup.py: what lth_kernels._C was built with.\n#pragma once\n#include <map>\n"
        "#include <string>\nnamespace lth {\n"
        f"static const std::map<std::string, std::string> kBuildInfo = {{\n{body}\n}};\n}}  // namespace lth\n"
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    # Keep the old file (and its mtime) when nothing changed, so ninja does not rebuild module.cpp.
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old == text:
        os.remove(tmp)
    else:
        os.replace(tmp, path)


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
