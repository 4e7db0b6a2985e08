"""Optional Triton import, and where the Triton kernels of the package go.

Three places: the GPU (CUDA tensors; autotuned configs), the interpreter (CPU tensors under
``TRITON_INTERPRET=1``; small fixed configs), and a *compile-only target* (:func:`compile_only`): any tensors, the
GPU configs of a named architecture, every config the launcher or its autotuner may pick compiled for that
architecture and recorded, nothing launched. The last one is the static GPU proof (``python -m bench.gpu_proof``):
it needs neither a GPU nor a CUDA driver, only Triton's bundled compiler.

``LTH_KERNELS_AUTOTUNE=0`` pins one GPU config per kernel (the best-guess config, marked in the static-proof
tables) instead of autotuning: a short GPU session spends its minutes on tests, not on timing configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU architecture to compile for without one: what the launchers would read from the device."""

    name: str  # "sm_90a"
    capability: int  # 90
    smem_per_block: int  # opt-in shared memory per block, bytes (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    sms: int  # streaming multiprocessors (token splits of the dW kernel)
    device: str  # the part these numbers are from


# H100 SXM and A100 (datasheet / CUDA occupancy tables). Triton turns capability 90 into sm_90a (wgmma).
TARGETS = {"sm_90a": Target("sm_90a", 90, 232448, 132, "H100 SXM"),
           "sm_80": Target("sm_80", 80, 166912, 108, "A100")}

_target: Target | None = None  # set by compile_only()
_records: list | None = None
_pinned_only = False


def compile_target() -> Target | None:
    """The compile-only target in force, or None (kernels run)."""
    return _target


def gpu_configs(device) -> bool:
    """Whether the launchers use their GPU configs: CUDA tensors, or any tensors under a compile-only target."""
    return _target is not None or device.type == "cuda"


def pinned_configs() -> bool:
    """``LTH_KERNELS_AUTOTUNE=0``: every tuned kernel runs its pinned config."""
    return os.environ.get("LTH_KERNELS_AUTOTUNE", "1") == "0"


def smem_per_block(device) -> int:
    """Shared memory one block may use on ``device`` (or the compile-only target)."""
    if _target is not None:
        return _target.smem_per_block
    import torch

    props = torch.cuda.get_device_properties(device if device.index is not None else torch.cuda.current_device())
    return getattr(props, "shared_memory_per_block_optin", 0) or 166912


def capability(device) -> int:
    """Compute capability of ``device`` (or the compile-only target) as 10 * major + minor: 90 for an H100."""
    if _target is not None:
        return _target.capability
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def sm_count(device) -> int:
    if _target is not None:
        return _target.sms
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


def _config_kwargs(config) -> dict:
    # Config.all_kwargs() (Triton >= 3.0) adds num_warps/num_stages/...; older ones only have the fields.
    if hasattr(config, "all_kwargs"):
        return dict(config.all_kwargs())
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", None)
    return getattr(fn, "__name__", None) or kernel.__name__


def _compile(kernel, grid, args, kwargs, pinned: bool) -> None:
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    meta = {k: v for k, v in kwargs.items() if not hasattr(v, "data_ptr")}
    dtype = next((str(a.dtype).replace("torch.", "") for a in args if hasattr(a, "data_ptr")), "")
    _records.append({"kernel": kernel_name(kernel), "dtype": dtype, "meta": meta, "pinned": pinned,
                     "compiled": compiled})


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``; under a compile-only target: compile for it and record, no launch."""
    if _target is None:
        kernel[grid](*args, **kwargs)
    else:
        _compile(kernel, grid, args, kwargs, pinned=True)


def spill_prune(operand: str, fields: tuple[str, ...], spills: dict, applies=None):
    """A ``Tuned`` prune that drops the configs the static proof found spilling registers.

    ``spills[arch][dtype]``: (``fields`` values..., num_stages, num_warps) tuples, ``arch`` 90 (Hopper) or 80
    (Ampere-class, any capability below 90), ``dtype`` the ``operand``'s torch dtype or ``"*"`` for all;
    ``applies(named)`` limits the drop to some calls (e.g. only with the mask applied)."""
    def prune(configs, named):
        t = named[operand]
        if applies is not None and not applies(named):
            return list(configs)
        by_dtype = spills.get(90 if capability(t.device) >= 90 else 80, {})
        drop = by_dtype.get(t.dtype, set()) | by_dtype.get("*", set())
        return [c for c in configs if (*(c.kwargs[f] for f in fields), c.num_stages, c.num_warps) not in drop]
    return prune


class Tuned:
    """A kernel with its GPU configs: autotuned per ``key`` on the GPU; one pinned config (``configs[pinned]``, or
    the first config the prunes keep) when ``LTH_KERNELS_AUTOTUNE=0``; every kept config compiled under a
    compile-only target.

    ``prune(configs, args)`` gets all arguments by name. ``smem=(operand, (rows, red, cols))`` also drops configs
    whose pipelined operand tiles, ``num_stages * (rows*red + red*cols)`` elements of ``operand``'s size, exceed
    the device's shared memory (an upper bound of what Triton allocates; the static proof checks the real use).
    At least one config is always kept (the last). ``grid(meta)`` gets the arguments and the config's fields by
    name, as Triton's autotuner passes them.

    ``exact=(precision_arg, configs)``: the configs (the first one pinned) used instead when that argument is
    ``"ieee"`` and the ``smem`` operand is fp32. Exact fp32 has no tensor cores: the FMA dot holds whole operand
    rows per thread, so the tensor-core tiles spill registers there and smaller ones are needed."""

    def __init__(self, kernel, configs, key, prune=None, smem=None, pinned: int = 0, exact=None):
        self.kernel, self.configs, self.prune, self.smem, self.pinned = kernel, configs, prune, smem, configs[pinned]
        self.exact_arg, self.exact = exact or (None, [])
        self.tuner = triton.autotune(configs=configs + self.exact, key=key,
                                     prune_configs_by={"early_config_prune": self._early_prune})(kernel)

    def _early_prune(self, configs, named_args, **kwargs):
        return self.pruned((), {**named_args, **kwargs})

    def _exact(self, named: dict) -> bool:
        return bool(self.exact) and named.get(self.exact_arg) == "ieee" and \
            str(named[self.smem[0]].dtype) == "torch.float32"

    def pruned(self, args: tuple, kwargs: dict) -> list:
        named = {**dict(zip(self.kernel.arg_names, args)), **kwargs}
        configs = self.exact if self._exact(named) else self.configs
        kept = self.prune(configs, named) if self.prune else list(configs)
        if self.smem:
            operand, dims = self.smem
            elt, limit = named[operand].element_size(), smem_per_block(named[operand].device)
            fits = [c for c in kept if c.num_stages * _tile_elements(c, named, dims) * elt <= limit]
            kept = fits or kept[-1:]
        if not kept:
            raise RuntimeError(f"{kernel_name(self.kernel)}: the prune kept no config")
        return kept

    def pinned_config(self, args: tuple, kwargs: dict):
        kept = self.pruned(args, kwargs)
        # by identity: Config compares by value, and an exact config may equal a tensor-core one
        return self.pinned if any(c is self.pinned for c in kept) else kept[0]  # exact: the first kept one

    def __call__(self, grid, *args, **kwargs) -> None:
        named = {**dict(zip(self.kernel.arg_names, args)), **kwargs}
        if _target is not None:
            pin = self.pinned_config(args, kwargs)
            for c in [pin] if _pinned_only else self.pruned(args, kwargs):
                ck = _config_kwargs(c)
                _compile(self.kernel, grid({**named, **c.kwargs}), args, {**kwargs, **ck}, pinned=c is pin)
        elif pinned_configs():
            c = self.pinned_config(args, kwargs)
            self.kernel[grid({**named, **c.kwargs})](*args, **kwargs, **_config_kwargs(c))
        else:
            self.tuner[grid](*args, **kwargs)


def _tile_elements(config, named: dict, dims) -> int:
    rows, red, cols = (config.kwargs.get(d, named.get(d)) for d in dims)
    return rows * red + red * cols


class _StandInDriver:
    """What ``JITFunction.warmup`` asks of Triton's active driver to compile, answered for a target.

    Assumed (Triton 3.6-3.8): the compile path reads the current device, stream and target only; it never loads
    the binary. Anything else it asks for needs a GPU and fails here with the name of what was asked."""

    def __init__(self, target: Target):
        self.target = target

    def get_current_device(self):
        # Triton caches compiled kernels per device id: one id per target keeps the two architectures apart.
        return self.target.capability

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.target.capability, 32)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def __getattr__(self, name):
        raise RuntimeError(f"compile-only target {self.target.name}: Triton asked the driver for {name!r}, which "
                           "needs a GPU (a kernel was launched or autotuned instead of compiled)")


@contextlib.contextmanager
def compile_only(target: str, pinned_only: bool = False):
    """Within: Triton kernels of the package compile for ``target`` ("sm_90a", "sm_80") with their GPU configs and
    are not launched; yields the list of records (kernel name, meta-parameters, pinned, CompiledKernel).
    ``pinned_only``: tuned kernels compile only the config ``LTH_KERNELS_AUTOTUNE=0`` would run, not every one.

    Outputs of ops called in this mode hold no results. One target per process: Triton's in-process caches key
    compiled kernels by device id, which is the capability here, so switching is safe but not needed."""
    global _target, _records, _pinned_only
    if not HAS_TRITON:
        raise RuntimeError("compile_only: Triton is not installed")
    if INTERPRET:
        raise RuntimeError("compile_only: TRITON_INTERPRET=1 is set; the interpreter compiles nothing")
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {sorted(TARGETS)}, got {target!r}")
    from triton.runtime import driver

    if not hasattr(driver, "set_active"):
        raise RuntimeError(f"compile_only: Triton {triton.__version__} has no driver.set_active (needs >= 3.0)")
    # DriverConfig (Triton >= 3.2) creates its driver lazily behind a property; reading `_active` keeps a CPU-only
    # machine from probing for a GPU. Older ones keep a plain `active` attribute (a lazy proxy).
    lazy = isinstance(getattr(type(driver), "active", None), property) and hasattr(driver, "_active")
    previous = driver._active if lazy else driver.active
    driver.set_active(_StandInDriver(TARGETS[target]))
    _target, _records, _pinned_only = TARGETS[target], [], pinned_only
    try:
        yield _records
    finally:
        _target, _records, _pinned_only = None, None, False
        if lazy:
            driver._active = previous  # None: created on the next use, as before
        else:
            driver.set_active(previous)
