"""Ticket training end to end: training steps/s, images/s and peak memory of whole models, sparse vs dense vs W*M.

    python -m bench.e2e --quick                  # ~5 min on an H100 (--budget-s 300): eager rows, then the
                                                 # headline rows compiled, until the budget is spent
    python -m bench.e2e                          # every row eager and compiled
    python -m bench.e2e --quick --out-dir DIR    # results to DIR instead of bench/results/
    python -m bench.e2e --smoke                  # CPU, tiny stand-in models: runs the whole script in seconds
    python -m bench.e2e --quick --list           # the rows, in execution order; nothing measured

Sections (bf16 autocast on CUDA; each variant trained by the Trainer, eager and with ``--training.compile``, conv
nets channels-last on CUDA as the Trainer does):

* ``resnet20``: open_lth's CIFAR ResNet-20, batch 128, on 50,000 CIFAR-shaped images (written in torchvision's
  format) through ``create_dataset``'s device pipeline (uint8 on the GPU, crop + flip + normalise per batch) and
  its loader pipeline (torchvision's per-image transforms, 0 and ``auto`` DataLoader workers); dense and
  unstructured tickets at 80 % / 95 %;
* ``resnet50`` (timm, 224², batch 128, SGD) and ``vit_b`` (timm ViT-B/16, 224², batch 64, AdamW) on random images
  held on the device: dense, and tickets unstructured 80 % / 95 %, 64-block 90 % and 2:4 (global magnitude on
  the random init), each as the project's layers (``ours``: ``sparsify``, whose dispatch picks the kernel;
  ``ours_2to4``: the 2:4 op on the linear layers) and as open_lth-style ``W*M`` layers (``wm``);
* ``deit_s``: DeiT-S data tickets at keep 0.9 / 0.7 / 0.5 (per selector stage, as ``lth data-ticket``) vs dense
  DeiT-S: the student (``ticketize_vit``) on the selector's ticket computed every step (``student_selector``,
  the training cost of a data-ticket student) and on a fixed index (``student_fixed``, the student alone);
* ``imp10``: the cost of a 10-level IMP run (20 % per level) for ResNet-20 and ResNet-50 at open_lth's training
  lengths, extrapolated from the measured eager step times (piecewise linear in sparsity between the measured
  tickets);
* ``target``: the goals (data ticket keep 0.7 >= 1.6x dense, 64-block ViT-B >= 1.5x, unstructured >= W*M,
  device pipeline >= 3x the DataLoader) against the measured ratios.

Timing: CUDA events at step boundaries after the warm-up (no sync inside the window), median of the windows;
the wall clock on CPU. Models are random-init (no download). Results: ``<date>-<device>-e2e.{md,json}``,
rewritten after every row so an interrupted run keeps what it measured; ``--budget-s`` stops starting rows.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._e2e_report import UNSTRUCTURED  # noqa: E402  (torch-free)

COLUMNS = ["section", "model", "variant", "ticket", "mode", "pipeline", "workers", "channels_last", "batch", "tokens",
           "density", "ms_per_step", "steps_per_s", "images_per_s", "vs_dense", "vs_wm", "peak_mem_GiB", "warmup_s",
           "row_s", "block_sparse_layers", "imp10_hours", "target", "value", "goal", "met", "error"]
KEEP_RATES = (0.9, 0.7, 0.5)
# (section, variant, ticket, pipeline) compiled in --quick: the comparisons the targets are about.
QUICK_COMPILED = {("resnet20", "dense", "dense", "device"), ("resnet50", "dense", "dense", "memory"),
                  ("resnet50", "wm", "unstructured80", "memory"), ("resnet50", "ours", "unstructured80", "memory"),
                  ("vit_b", "dense", "dense", "memory"),
                  ("vit_b", "ours", "block64_90", "memory"), ("deit_s", "dense", "dense", "memory"),
                  ("deit_s", "student_selector", "keep0.7", "memory")}
# (section, variant, ticket, pipeline, mode) of --smoke: each kind of row once (compiled: dynamo's eager backend).
SMOKE = {("resnet20", "dense", "dense", "device", "eager"), ("resnet20", "dense", "dense", "loader_w0", "eager"),
         ("resnet20", "wm", "unstructured80", "device", "eager"),
         ("resnet20", "ours", "unstructured80", "device", "eager"),
         ("resnet50", "dense", "dense", "memory", "eager"), ("resnet50", "ours", "unstructured80", "memory", "eager"),
         ("vit_b", "dense", "dense", "memory", "eager"), ("vit_b", "wm", "block64_90", "memory", "eager"),
         ("vit_b", "ours", "block64_90", "memory", "eager"), ("vit_b", "ours_2to4", "2:4", "memory", "eager"),
         ("vit_b", "ours", "block64_90", "memory", "compile"),
         ("deit_s", "dense", "dense", "memory", "eager"), ("deit_s", "student_selector", "keep0.7", "memory", "eager"),
         ("deit_s", "student_fixed", "keep0.7", "memory", "eager"),
         ("deit_s", "student_selector", "keep0.7", "memory", "compile")}


@dataclass(frozen=True)
class Case:
    section: str
    model: str
    img: int
    batch: int
    optimizer: str = "sgd"
    kwargs: dict = field(default_factory=dict)
    classes: int = 1000
    num_train: int = 0  # resnet20: CIFAR-shaped data set size; others: 4 batches of random images


@dataclass(frozen=True)
class Run:
    case: Case
    variant: str
    ticket: str = "dense"
    mode: str = "eager"
    pipeline: str = "memory"
    priority: int = 1  # 0: eager rows the targets need; 1: other eager rows; 2: headline compiled rows; 3: others


def _cases(smoke: bool) -> dict[str, Case]:
    if smoke:  # stand-ins small enough for a CPU; same code paths
        vit = {"depth": 2}
        return {"resnet20": Case("resnet20", "cifar_resnet_8", 32, 8, classes=10, num_train=64),
                "resnet50": Case("resnet50", "timm:test_resnet", 32, 4, classes=10),
                "vit_b": Case("vit_b", "vit_tiny", 32, 4, "adamw", vit, classes=10),
                "deit_s": Case("deit_s", "vit_tiny", 32, 4, "adamw", vit, classes=10)}
    return {"resnet20": Case("resnet20", "cifar_resnet_20", 32, 128, classes=10, num_train=50_000),
            "resnet50": Case("resnet50", "timm:resnet50", 224, 128),
            "vit_b": Case("vit_b", "timm:vit_base_patch16_224", 224, 64, "adamw"),
            "deit_s": Case("deit_s", "timm:deit_small_patch16_224", 224, 128, "adamw")}


def plan(kind: str, sections=None, modes=("eager", "compile")) -> list[Run]:
    """The rows of a ``kind`` (smoke | quick | full) run, in table order; ``priority`` orders the execution."""
    c = _cases(kind == "smoke")
    runs: list[Run] = []
    r20 = c["resnet20"]
    runs += [Run(r20, "dense", pipeline="device", priority=0), Run(r20, "dense", pipeline="loader_w0", priority=0),
             Run(r20, "dense", pipeline="loader_auto", priority=0)]
    runs += [Run(r20, v, t, pipeline="device") for t in UNSTRUCTURED for v in ("wm", "ours")]
    for name in ("resnet50", "vit_b"):
        case = c[name]
        runs.append(Run(case, "dense", priority=0))
        for t in (*UNSTRUCTURED, "block64_90", "2:4"):
            key = t == "unstructured80" or (name == "vit_b" and t == "block64_90")
            runs += [Run(case, v, t, priority=0 if key else 1) for v in ("wm", "ours")]
        if name == "vit_b":
            runs.append(Run(case, "ours_2to4", "2:4"))
    deit = c["deit_s"]
    runs.append(Run(deit, "dense", priority=0))
    runs += [Run(deit, v, f"keep{r:g}", priority=0 if r == 0.7 else 1)
             for r in KEEP_RATES for v in ("student_selector", "student_fixed")]
    # Compiled rows after every eager row (a compilation costs as much as several eager rows), the data-ticket
    # and ViT comparisons first.
    order = {"deit_s": 0, "vit_b": 1, "resnet50": 2, "resnet20": 3}
    compiled = [replace(r, mode="compile", priority=2 if _headline(r) else 3)
                for r in sorted(runs, key=lambda r: order[r.case.section])]
    if kind == "quick":
        compiled = [r for r in compiled if _headline(r)]
    runs += compiled
    if kind == "smoke":  # every code path once
        runs = [r for r in runs if (r.case.section, r.variant, r.ticket, r.pipeline, r.mode) in SMOKE]
    return [r for r in runs if r.mode in modes and (not sections or r.case.section in sections)]


def _headline(r: Run) -> bool:
    return (r.case.section, r.variant, r.ticket, r.pipeline) in QUICK_COMPILED


# --------------------------------------------------------------------------------------------- one row


@dataclass
class Settings:
    device: object
    warmup: int
    steps: int
    windows: int
    compile_backend: str = "inductor"
    amp: str = "bf16"
    data_root: str = ""  # where the CIFAR-shaped files are written
    tickets: dict = field(default_factory=dict)  # (section, ticket) -> Ticket, shared by wm and ours
    data: dict = field(default_factory=dict)  # (section, pipeline) -> (train_ds, test_ds)


def _build(run: Run, st: Settings):
    """(model, train_ds, test_ds, callbacks, tokens, density, block_sparse_layers) for one row."""
    import torch

    from bench import _e2e_variants as ev
    from lth_kernels.models import create_model

    case, dev = run.case, st.device
    torch.manual_seed(0)
    with dev:  # initialised on the device: seconds saved per ViT-B row
        model = create_model(case.model, num_classes=case.classes, in_chans=3, img_size=case.img, **case.kwargs)
    train, test = _data(run, st)
    callbacks, tokens, density, blocks = [], None, None, None
    if case.section == "deit_s":
        model, callbacks, tokens = _deit_variant(model, run, case)
    elif run.variant != "dense":
        key = (case.section, run.ticket)
        if key not in st.tickets:
            st.tickets[key] = ev.make_ticket(model, run.ticket)
        density = ev.ticket_density(st.tickets[key])
        model = ev.apply_variant(model, run.variant, st.tickets[key])
        # Compiled graphs keep the one masked op (MaskedLinear skips its data-dependent routes under tracing).
        blocks = ev.block_sparse_layers(model, dev) if run.variant == "ours" and run.mode == "eager" else None
    return model, train, test, callbacks, tokens, density, blocks


def _deit_variant(model, run: Run, case: Case):
    """Dense DeiT-S, or a data-ticket student built as the data-ticket workflow builds it."""
    import copy

    from bench import _e2e_variants as ev
    from lth_kernels.nn import ticketize_vit

    PatchSelector, SelectorPatches, StepClock, TicketStudent = ev.data_ticket_parts()
    n = model.patch_embed.num_patches
    if run.variant == "dense":
        return model, [], n + 1
    r = float(run.ticket.removeprefix("keep"))
    selector = PatchSelector(copy.deepcopy(model), r)  # random init: selection costs the same as a trained one
    source = SelectorPatches(selector)
    if run.variant == "student_fixed":
        index = selector.select(_probe_images(model, case))
        source = _FixedIndex(index)
    student = TicketStudent(ticketize_vit(model), source, input_mode="tokens")
    return student, [StepClock(source)], selector.num_kept + 1


class _FixedIndex:
    """One index for every batch: the student's own cost, without selection."""

    def __init__(self, index):
        self.index = index

    def __call__(self, images):
        return self.index


def _probe_images(model, case: Case):
    import torch

    dev = next(model.parameters()).device
    return torch.randn(case.batch, 3, case.img, case.img, device=dev)


def _data(run: Run, st: Settings):
    import torch

    from bench import _e2e_variants as ev
    from lth_kernels.data import TensorImageDataset

    case, dev = run.case, st.device
    key = (case.section, run.pipeline)
    if key not in st.data:
        g = torch.Generator().manual_seed(1)
        test = TensorImageDataset(torch.randn(case.batch, 3, case.img, case.img, generator=g),
                                  torch.randint(0, case.classes, (case.batch,), generator=g))
        if case.section == "resnet20":
            root = ev.cifar_files(st.data_root, case.num_train, case.batch)
            workers = "auto" if run.pipeline == "loader_auto" else 0
            train, test = ev.cifar_pipeline(root, "device" if run.pipeline == "device" else "loader", workers)
        else:
            n = 4 * case.batch
            train = TensorImageDataset(torch.randn(n, 3, case.img, case.img, device=dev),
                                       torch.randint(0, case.classes, (n,), device=dev))
        st.data = {k: v for k, v in st.data.items() if k[0] == case.section}  # keep one section's data resident
        st.data[key] = (train, test)
    return st.data[key]


def measure(run: Run, st: Settings) -> dict:
    """Train one variant for warm-up + windows x steps steps and return its row."""
    import torch

    from bench import _e2e_variants as ev
    from lth_kernels.training.hparams import TrainingHparams

    case, dev = run.case, st.device
    row = _base_row(run)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, train, test, callbacks, tokens, density, blocks = _build(run, st)
    workers = getattr(train, "num_workers", 0) if run.pipeline.startswith("loader") else 0
    warmup, steps = st.warmup, st.steps
    if run.pipeline.startswith("loader"):  # past the workers' prefetched batches, to the loader's steady rate
        warmup, steps = warmup + 4 * workers, 3 * steps
    timer = ev.StepTimer(dev, warmup, steps, st.windows)
    # open_lth's SGD for the conv nets, DeiT's AdamW for the transformers; the values do not change the cost.
    hp = TrainingHparams(optimizer=case.optimizer, lr=0.1 if case.optimizer == "sgd" else 1e-3,
                         weight_decay=1e-4 if case.optimizer == "sgd" else 0.05,
                         training_steps=f"{timer.end_step}it", eval_every="0it", amp=st.amp,
                         compile=run.mode == "compile")
    # The Trainer compiles the training forward (and backward), and puts conv nets channels-last on CUDA.
    trainer = ev.TimedTrainer(model, train, test, hp, batch_size=case.batch, device=dev,
                              callbacks=[*callbacks, timer], eval_at_start=False, progress=False, num_workers=workers,
                              compile_options={"backend": st.compile_backend})
    trainer.train()
    ms = timer.ms_per_step()
    row.update(tokens=tokens, density=density, ms_per_step=ms, steps_per_s=1e3 / ms,
               images_per_s=case.batch * 1e3 / ms, warmup_s=timer.warmup_s, block_sparse_layers=blocks,
               channels_last=trainer.channels_last,
               peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None)
    if run.pipeline.startswith("loader"):
        row["workers"] = workers
    return row


# --------------------------------------------------------------------------------------------- driver


def _free(device, compiled: bool) -> None:
    import torch

    if compiled:
        import torch._dynamo

        torch._dynamo.reset()  # compiled code holds its model; drop it before the next row
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--quick", action="store_true", help="~5 min on an H100: eager rows + the headline compiles")
    kind.add_argument("--smoke", action="store_true", help="CPU, tiny stand-in models, a few steps each")
    p.add_argument("--out-dir", default=None, help="where the results go (default bench/results; --smoke: none)")
    p.add_argument("--no-write", action="store_true", help="print the rows, write no files")
    p.add_argument("--list", action="store_true", help="print the rows the run would measure, in execution order; "
                                                       "measure nothing")
    p.add_argument("--sections", nargs="+", choices=("resnet20", "resnet50", "vit_b", "deit_s"), default=None)
    p.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=("eager", "compile"))
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new row after this many seconds (default: 300 with --quick, none otherwise)")
    p.add_argument("--amp", choices=("bf16", "off"), default=None,
                   help="autocast dtype of the training step (default: bf16 on CUDA, off with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="steps per timing window")
    p.add_argument("--windows", type=int, default=None, help="timing windows (the median is kept)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (compilation, autotuning), >= 1")
    args = p.parse_args(argv)
    for name in ("steps", "windows", "warmup"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name}: expected >= 1, got {v}")
    if args.budget_s is not None and args.budget_s <= 0:
        p.error(f"--budget-s: expected > 0, got {args.budget_s}")
    if args.list:
        kind_name = "smoke" if args.smoke else "quick" if args.quick else "full"
        for r in sorted(plan(kind_name, args.sections, tuple(args.modes)), key=lambda r: r.priority):
            print(r.case.section, r.case.model, r.variant, r.ticket, r.mode, r.pipeline, f"batch {r.case.batch}")
        return 0
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("bench/e2e.py needs a CUDA device (use --smoke for a tiny CPU run); nothing measured.")
        return 0
    threads = torch.get_num_threads()
    if args.smoke:  # one thread: a shared CPU is oversubscribed by intra-op threads, and the smoke times nothing
        torch.set_num_threads(1)
    data_root = tempfile.mkdtemp(prefix="lth-e2e-")  # the CIFAR-shaped files (150 MB at full size)
    try:
        return _run(args, torch, data_root)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(data_root, ignore_errors=True)


def _run(args, torch, data_root: str) -> int:
    from bench.common import env_info, write_results

    kind_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    device = torch.device("cpu" if args.smoke else "cuda")
    warmup, steps, windows = {"smoke": (1, 1, 2), "quick": (5, 10, 3), "full": (10, 20, 5)}[kind_name]
    st = Settings(device, args.warmup if args.warmup is not None else warmup, args.steps or steps,
                  args.windows or windows, compile_backend="eager" if args.smoke else "inductor",
                  amp=args.amp or ("off" if args.smoke else "bf16"), data_root=data_root)
    budget = args.budget_s if args.budget_s is not None else (300.0 if args.quick else None)
    env = {**env_info(device), "plan": kind_name, "amp": st.amp, "compile_backend": st.compile_backend,
           "warmup_steps": st.warmup, "window_steps": st.steps, "windows": st.windows}
    out_dir = args.out_dir
    write = not args.no_write and (out_dir is not None or not args.smoke)
    runs = plan(kind_name, args.sections, tuple(args.modes))
    print(env)
    print(f"{len(runs)} rows; budget {budget or 'none'} s")
    results: dict[int, dict] = {}
    t0 = time.perf_counter()
    for i in sorted(range(len(runs)), key=lambda j: runs[j].priority):
        run = runs[i]
        spent = time.perf_counter() - t0
        if budget is not None and (spent >= budget or (run.mode == "compile" and budget - spent < 60)):
            results[i] = {**_base_row(run), "error": f"skipped: time budget {budget:g} s spent"}
            continue
        t_row = time.perf_counter()
        try:
            results[i] = measure(run, st)
        except Exception as e:  # noqa: BLE001 - one failing variant (OOM, an unsupported path) must not end the run
            results[i] = {**_base_row(run), "error": _error_line(e)}
        _free(device, run.mode == "compile")
        results[i]["row_s"] = time.perf_counter() - t_row
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results[i].items()}, flush=True)
        if write:
            _write(write_results, runs, results, env, out_dir)
    rows = _all_rows(runs, results)
    for r in rows[len(results):]:
        print(r)
    if write:
        print("wrote", _write(write_results, runs, results, env, out_dir))
    if args.smoke:
        print(f"smoke: {len(results)} rows in {time.perf_counter() - t0:.1f} s (CPU stand-ins, not a result)")
    return 0


def _base_row(run: Run) -> dict:
    return {"section": run.case.section, "model": run.case.model, "variant": run.variant, "ticket": run.ticket,
            "mode": run.mode, "pipeline": run.pipeline, "batch": run.case.batch}


def _all_rows(runs: list[Run], results: dict[int, dict]) -> list[dict]:
    from bench._e2e_report import add_ratios, imp_rows, target_rows

    rows = [results[i] for i in range(len(runs)) if i in results]
    add_ratios(rows)
    return rows + imp_rows(rows) + target_rows(rows)


def _write(write_results, runs, results, env, out_dir) -> str:
    return write_results("e2e", _all_rows(runs, results), env, COLUMNS, out_dir=out_dir)


if __name__ == "__main__":
    sys.exit(main())
