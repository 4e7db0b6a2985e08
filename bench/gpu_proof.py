"""Static GPU proof: every Triton kernel of lth_kernels.ops compiled for sm_90a and sm_80 on a CPU-only machine.

    python -m bench.gpu_proof                        # both targets -> bench/results/<date>-static-sm{90,80}.{md,json}
    python -m bench.gpu_proof --targets sm_80 --out-dir OUT
    python -m bench.gpu_proof --list                 # the cases (one unit of work each)
    python -m bench.gpu_proof --pinned               # CI tier: only the configs LTH_KERNELS_AUTOTUNE=0 runs

Each case (``bench/_proof_cases.py``) calls a launcher on CPU tensors at the benchmark shapes under
``lth_kernels.ops._triton.compile_only(target)``: the launcher picks its GPU configs, every config its autotuner may
choose after pruning is compiled for the target by Triton's own compiler, and nothing runs. Per distinct compiled
variant the table gives registers, spilled bytes (local memory), shared memory (Triton's dynamic allocation plus
the cubin's static part) against the target's per-block limit, and the count of tensor-core instructions in the
SASS (HGMMA: wgmma, Hopper; HMMA: mma.sync). The CUDA kernels of ``lth_kernels._C`` get the same table.

It fails (exit 1) on: a compile error; spills in any compiled variant (all of them are configs the autotuner may
pick: prune such configs instead); shared memory over the limit; a 16-bit GEMM-type kernel (masked matmul,
grad-weight, sdd/dds, attention) without tensor-core instructions; a ``@triton.jit`` function of ``lth_kernels.ops``
that no compiled variant covers. Work runs in ``--jobs`` processes; Triton's compile cache and the cubin analyses
live under ``~/.cache/lth_kernels/gpu-proof`` (``--cache-dir``; never committed), and a run whose sources (kernels,
cases, this script, versions) have not changed since the last one reuses its rows.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import glob
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Outside the checkout so that it survives a fresh clone on the same machine (CI); LTH_GPU_PROOF_CACHE moves it.
CACHE = os.environ.get("LTH_GPU_PROOF_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lth_kernels", "gpu-proof")
RESULTS = os.path.join(ROOT, "bench", "results")
TARGETS = ("sm_90a", "sm_80")
SHORT = {"sm_90a": "sm90", "sm_80": "sm80"}
# GEMM-type kernels: their 16-bit variants must use tensor cores.
GEMM_KERNELS = {"_masked_mm_kernel", "_grad_weight_kernel", "_dds_kernel", "_sdd_kernel", "_attn_fwd_kernel",
                "_attn_bwd_kernel"}
SIXTEEN_BIT = {"bfloat16", "float16"}
# config fields shown in the table's config column; the other constexprs go to the flags column
_CONFIG_KEYS = re.compile(r"^(BLOCK\w*|B[A-Z]|GROUP_SIZE_\w|num_warps|num_stages|TILE|SUB|BN)$")


def source_key() -> str:
    """Hash of everything a proof result depends on: kernels, cases, this script, Triton and torch versions."""
    import torch
    import triton

    files = sorted(glob.glob(os.path.join(ROOT, "lth_kernels", "ops", "*.py"))
                   + [os.path.join(ROOT, "bench", f) for f in ("gpu_proof.py", "_proof_cases.py", "_cubin.py",
                                                                "masked_matmul.py")])
    h = hashlib.sha256(f"{triton.__version__} {torch.__version__}".encode())
    for f in files:
        with open(f, "rb") as fh:
            h.update(os.path.relpath(f, ROOT).encode() + fh.read())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- worker side


def _init_worker(cache_dir: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    os.environ.pop("TRITON_INTERPRET", None)


def _analysis(compiled, cache_dir: str) -> dict:
    from bench._cubin import analyse_cubin

    cubin = compiled.asm["cubin"]
    sha = hashlib.sha1(cubin).hexdigest()
    path = os.path.join(cache_dir, "cubin", sha + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    info = {"sha": sha, **analyse_cubin(cubin), "smem": int(compiled.metadata.shared)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)
    return info


def run_case(target: str, case: str, cache_dir: str, pinned: bool = False) -> tuple[list[dict], str | None, float]:
    """Compiles one case for one target; returns (rows, error, CPU seconds of this process and its ptxas runs)."""
    t0 = _cpu_seconds()
    from bench._proof_cases import cases
    from lth_kernels.ops._triton import compile_only

    rows, error = [], None
    with compile_only(target, pinned_only=pinned) as records:
        try:
            cases(pinned)[case]()
        except Exception as e:  # noqa: BLE001 - a compile error is a proof failure, reported with its case
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            traceback.print_exc()
        for rec in records:
            meta = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in rec["meta"].items()
                    if k not in _NOT_SHOWN and v is not None}
            rows.append({"kernel": rec["kernel"], "dtype": rec["dtype"], "meta": meta, "pinned": rec["pinned"],
                         "case": case, **_analysis(rec["compiled"], cache_dir)})
    return rows, error, _cpu_seconds() - t0


# launch options that are the same for every variant
_NOT_SHOWN = {"debug", "instrumentation_mode", "num_ctas", "maxnreg", "ir_override", "pre_hook"}


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------------------------- checks


def package_functions() -> dict[str, str]:
    """name -> source of every ``@triton.jit`` function defined in ``lth_kernels.ops``."""
    import importlib
    import inspect
    import pkgutil

    import lth_kernels.ops as ops

    out = {}
    for info in pkgutil.iter_modules(ops.__path__):
        module = importlib.import_module(f"lth_kernels.ops.{info.name}")
        for name, obj in vars(module).items():
            # JITFunction, or InterpretedFunction under TRITON_INTERPRET=1: both wrap the Python function as .fn
            # (an autotuner's .fn is the JITFunction, not a function)
            fn = getattr(obj, "fn", None)
            if type(obj).__module__.startswith("triton.") and inspect.isfunction(fn) \
                    and fn.__module__ == module.__name__:
                out[name] = inspect.getsource(fn)
    return out


def uncovered(functions: dict[str, str], compiled: set[str]) -> list[str]:
    """Kernels (``*_kernel``) never compiled, and helpers no compiled kernel reaches through its source."""
    reached, todo = set(), [k for k in functions if k in compiled]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [f for f in functions if f not in reached and re.search(rf"\b{f}\(", functions[name])]
    return sorted(set(functions) - reached)


def variant_rows(rows: list[dict], target: str) -> list[dict]:
    """One row per distinct cubin, with the cases that produced it and the verdict."""
    from lth_kernels.ops._triton import TARGETS

    limit = TARGETS[target].smem_per_block
    merged = {}
    for r in rows:
        v = merged.setdefault(r["sha"], {**r, "cases": set(), "pinned": False})
        v["cases"].add(r["case"])
        v["pinned"] = v["pinned"] or r["pinned"]
    out = []
    for v in merged.values():
        meta = v.pop("meta")
        v["config"] = " ".join(f"{k}={meta[k]}" for k in sorted(meta) if _CONFIG_KEYS.match(k))
        v["flags"] = " ".join(f"{k}={meta[k]}" for k in sorted(meta) if not _CONFIG_KEYS.match(k))
        v["cases"] = sorted(v["cases"])
        v["smem_total"] = v["smem"] + v["static_smem"]
        v["smem_limit"] = limit
        v["tensor_ops"] = v["hgmma"] + v["hmma"]
        problems = []
        if v["local"] or v["stack"]:
            problems.append(f"spills: {v['local']} B local, {v['stack']} B stack")
        if v["smem_total"] > limit:
            problems.append(f"shared memory {v['smem_total']} B > {limit} B")
        if v["kernel"] in GEMM_KERNELS and v["dtype"] in SIXTEEN_BIT and not v["tensor_ops"]:
            problems.append("no tensor-core instructions")
        v["status"] = "; ".join(problems) or "ok"
        out.append(v)
    return sorted(out, key=lambda v: (v["kernel"], v["dtype"], v["flags"], v["config"]))


def cuda_rows(target: str) -> tuple[list[dict], str]:
    """The CUDA kernels of lth_kernels._C for one architecture, or why there are none."""
    from bench._cubin import TENSOR_OPS, instruction_mix, resource_usage
    from lth_kernels.ops._triton import TARGETS

    libs = glob.glob(os.path.join(ROOT, "lth_kernels", "_C*.so"))
    if not libs:
        return [], "lth_kernels/_C*.so is not built"
    try:
        usage = resource_usage(libs[0], target)
        mix = instruction_mix(libs[0], target)
    except RuntimeError as e:
        return [], f"no {target} code in {os.path.basename(libs[0])} ({str(e)[:200]})"
    if not usage:
        return [], f"no {target} kernels in {os.path.basename(libs[0])} (built without CUDA for this arch)"
    limit = TARGETS[target].smem_per_block
    rows = []
    for (_, func), u in sorted(usage.items(), key=lambda kv: kv[0][1]):
        counts = mix.get((target, func), mix.get(("", func), {}))
        problems = []
        if u["local"] or u["stack"]:
            problems.append(f"local memory: {u['local']} B, stack {u['stack']} B")
        if u["static_smem"] > limit:
            problems.append(f"shared memory {u['static_smem']} B > {limit} B")
        rows.append({"kernel": _demangle(func), "symbol": func, **u,
                     **{op.lower(): counts.get(op, 0) for op in TENSOR_OPS}, "status": "; ".join(problems) or "ok"})
    return rows, ""


def _demangle(symbol: str) -> str:
    import shutil
    import subprocess

    exe = shutil.which("c++filt")
    if not exe:
        return symbol
    try:
        return subprocess.run([exe, symbol], capture_output=True, text=True, timeout=10).stdout.strip() or symbol
    except (OSError, subprocess.SubprocessError):
        return symbol


# --------------------------------------------------------------------------------------------- tables


def kernel_summary(variants: list[dict]) -> list[dict]:
    """Per kernel: variants proven (and pinned ones), max registers, max spills, max shared memory, the fewest
    tensor-core instructions of a 16-bit variant."""
    out = {}
    for v in variants:
        s = out.setdefault(v["kernel"], {"kernel": v["kernel"], "variants": 0, "pinned": 0, "dtypes": set(),
                                         "max_regs": 0, "max_spill_bytes": 0, "max_smem": 0,
                                         "min_tensor_ops_16bit": None, "max_tensor_ops": 0, "failures": 0})
        s["variants"] += 1
        s["pinned"] += v["pinned"]
        s["dtypes"].add(v["dtype"])
        s["max_regs"] = max(s["max_regs"], v["regs"])
        s["max_spill_bytes"] = max(s["max_spill_bytes"], v["local"] + v["stack"])
        s["max_smem"] = max(s["max_smem"], v["smem_total"])
        s["max_tensor_ops"] = max(s["max_tensor_ops"], v["tensor_ops"])
        if v["dtype"] in SIXTEEN_BIT:
            low = s["min_tensor_ops_16bit"]
            s["min_tensor_ops_16bit"] = v["tensor_ops"] if low is None else min(low, v["tensor_ops"])
        s["failures"] += v["status"] != "ok"
    for s in out.values():
        s["dtypes"] = " ".join(sorted(s["dtypes"]))
    return sorted(out.values(), key=lambda s: s["kernel"])


def _md_table(rows: list[dict], columns: list[str]) -> list[str]:
    def cell(v):
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, list):
            return ", ".join(v)
        return "" if v is None else str(v)

    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows])


def write_tables(target: str, report: dict, out_dir: str) -> str:
    from lth_kernels.training.rundir import atomic_write_text as write

    env = report["env"]
    base = os.path.join(out_dir, f"{env['date']}-static-{SHORT[target]}")
    os.makedirs(out_dir, exist_ok=True)
    md = [f"# Static GPU proof, {target} ({env['limits']})", "",
          " | ".join(f"{k}: {v}" for k, v in env.items() if k != "limits"), "",
          "Compiled without a GPU by `python -m bench.gpu_proof` (see its docstring): the Triton kernels of "
          f"`lth_kernels.ops` at the benchmark shapes and dtypes; tier: {env['tier']}. Registers, spills and shared "
          "memory are the compiler's numbers, not a run; `pinned` marks the configs `LTH_KERNELS_AUTOTUNE=0` runs. "
          "Nothing here was measured on a GPU.", "",
          f"Verdict: **{'PASS' if not report['failures'] else 'FAIL'}**, {len(report['variants'])} Triton variants, "
          f"{len(report['cuda'])} CUDA kernels, cases {env['cases']}.", ""]
    for f in report["failures"]:
        md.append(f"- FAIL: {f}")
    if report["partial"] and report["not_covered"]:
        md.append(f"- Partial run: not covered by the selected cases: {', '.join(report['not_covered'])}")
    md += ["", "## Per kernel", ""]
    md += _md_table(report["summary"], ["kernel", "variants", "pinned", "dtypes", "max_regs", "max_spill_bytes",
                                        "max_smem", "min_tensor_ops_16bit", "max_tensor_ops", "failures"])
    md += ["", "## Triton variants", ""]
    md += _md_table(report["variants"], ["kernel", "dtype", "flags", "config", "pinned", "regs", "local", "stack",
                                         "smem_total", "smem_limit", "hgmma", "hmma", "status", "cases"])
    md += ["", "## CUDA kernels of lth_kernels._C", ""]
    md += _md_table(report["cuda"], ["kernel", "regs", "local", "stack", "static_smem", "hgmma", "hmma", "status"]) \
        if report["cuda"] else [f"None: {report['cuda_note']}"]
    parts = [f'{{"env": {json.dumps(env)}', f' "failures": {json.dumps(report["failures"])}']
    for key in ("summary", "cuda", "variants"):  # one row per line: diffable
        parts.append(f' "{key}": [\n' + ",\n".join("  " + json.dumps(r) for r in report[key]) + "\n ]")
    write(base + ".json", ",\n".join(parts) + "}\n")
    write(base + ".md", "\n".join(md) + "\n")
    return base + ".md"


# --------------------------------------------------------------------------------------------- driver


def _env(target: str, key: str) -> dict:
    import torch
    import triton

    from bench.common import _commit
    from lth_kernels.ops._triton import TARGETS

    t = TARGETS[target]
    return {"target": target, "limits": f"{t.device}: {t.smem_per_block} B shared memory per block, {t.sms} SMs",
            "triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "commit": _commit(), "date": datetime.date.today().isoformat(), "source_key": key}


def compile_all(targets, jobs: int, cache_dir: str, key: str, force: bool, pinned: bool = False,
                names: list | None = None) -> dict[str, tuple[list, list, dict]]:
    """target -> (rows, errors, case seconds); rows of an unchanged source key come from the cache."""
    from bench._proof_cases import cases

    names = names or list(cases())
    if names != list(cases()):
        key = hashlib.sha256((key + " ".join(names)).encode()).hexdigest()[:16]
    done, todo = {}, []
    for target in targets:
        path = os.path.join(cache_dir, f"{target}-{'pinned-' if pinned else ''}{key}.json")
        if not force and os.path.exists(path):
            with open(path) as f:
                done[target] = tuple(json.load(f))
            print(f"{target}: sources unchanged since the last proof ({key}), reusing its rows")
        else:
            todo += [(target, n) for n in names]
    if todo:
        os.environ.pop("TRITON_INTERPRET", None)
        results = {t: ([], [], {}) for t in {t for t, _ in todo}}
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                    initargs=(cache_dir,)) as pool:
            futures = {pool.submit(run_case, t, n, cache_dir, pinned): (t, n) for t, n in todo}
            for fut in cf.as_completed(futures):
                t, n = futures[fut]
                try:
                    rows, error, secs = fut.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker is a failure of that case
                    rows, error, secs = [], f"worker failed: {type(e).__name__}: {e}", 0.0
                results[t][0].extend(rows)
                if error:
                    results[t][1].append(f"{n}: compile error: {error}")
                results[t][2][n] = round(secs, 1)
                print(f"  {t} {n}: {len(rows)} configs compiled or cached, {secs:.0f} CPU s"
                      f"{'  ERROR ' + error if error else ''}", flush=True)
        for t, res in results.items():
            done[t] = res
            if not res[1]:  # only clean runs are reused
                final = os.path.join(cache_dir, f"{t}-{'pinned-' if pinned else ''}{key}.json")
                with open(final + ".tmp", "w") as f:
                    json.dump(res, f)
                os.replace(final + ".tmp", final)
    return done


def build_report(target: str, rows: list, errors: list, seconds: dict, key: str, functions: dict,
                 partial: bool = False) -> dict:
    variants = variant_rows(rows, target)
    cuda, note = cuda_rows(target)
    failures = list(errors)
    failures += [f"{v['kernel']} {v['dtype']} {v['flags']} {v['config']}: {v['status']}"
                 for v in variants if v["status"] != "ok"]
    failures += [f"CUDA {c['kernel']}: {c['status']}" for c in cuda if c["status"] != "ok"]
    missing = uncovered(functions, {v["kernel"] for v in variants})
    if not partial:  # a run over selected cases (--cases) leaves the others out on purpose
        failures += [f"{f}: no compiled variant covers it" for f in missing]
    env = {**_env(target, key), "compile_cpu_s": round(sum(seconds.values()))}
    return {"env": env, "partial": partial, "not_covered": missing, "variants": variants,
            "summary": kernel_summary(variants), "cuda": cuda, "cuda_note": note, "failures": failures}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: all cores)")
    p.add_argument("--out-dir", default=RESULTS, help="where the tables go (default bench/results)")
    p.add_argument("--cache-dir", default=CACHE, help="compile cache and reusable rows (default "
                   "~/.cache/lth_kernels/gpu-proof or $LTH_GPU_PROOF_CACHE)")
    p.add_argument("--force", action="store_true", help="compile again even if the sources are unchanged")
    p.add_argument("--no-write", action="store_true", help="check only, write no tables")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--cases", nargs="+", help="only these cases (see --list); coverage is then not checked")
    p.add_argument("--pinned", action="store_true",
                   help="CI tier: tuned kernels compile only their pinned config (what gpu-check runs), every "
                        "kernel and dtype still covered; the default compiles every config the autotuner may pick")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from bench._proof_cases import cases

    if args.list:
        print("\n".join(cases()))
        return 0
    if args.jobs < 1:
        p.error(f"--jobs: expected a positive int, got {args.jobs}")
    t0 = time.perf_counter()
    os.makedirs(args.cache_dir, exist_ok=True)
    key = source_key()
    known = list(cases(args.pinned))
    if args.cases and (unknown := sorted(set(args.cases) - set(known))):
        p.error(f"--cases: unknown case(s) {unknown}; see --list")
    names = [n for n in known if not args.cases or n in args.cases]
    results = compile_all(args.targets, args.jobs, args.cache_dir, key, args.force, args.pinned, names)
    functions = package_functions()
    status = 0
    for target in args.targets:
        rows, errors, seconds = results[target]
        report = build_report(target, rows, errors, seconds, key, functions, partial=len(names) < len(known))
        report["env"]["cases"] = f"{len(names)} of {len(known)}"
        report["env"]["tier"] = ("pinned configs only (--pinned)" if args.pinned
                                 else "every config the launcher or autotuner may pick")
        where = "" if args.no_write else f" -> {write_tables(target, report, args.out_dir)}"
        print(f"{target}: {len(report['variants'])} Triton variants of {len(report['summary'])} kernels, "
              f"{len(report['cuda'])} CUDA kernels, {len(report['failures'])} failures{where}")
        for f in report["failures"]:
            print(f"  FAIL {f}")
        status |= bool(report["failures"])
    print(f"static GPU proof: {'FAIL' if status else 'PASS'} in {time.perf_counter() - t0:.0f} s")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
