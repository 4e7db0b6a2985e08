"""Ticket-training throughput: the device pipeline against torchvision's DataLoader path, compiled and eager.

    python bench/train_throughput.py [--rounds 2] [--models lenet_300_100,conv4,cifar_resnet_20] [--threads 1] [--smoke]

Writes MNIST- and CIFAR-shaped data sets in torchvision's on-disk formats into a temporary directory (so it
runs anywhere, without the real data) and measures, in one run, with the rounds interleaved (every provider
once per round, so that a busy machine slows them alike; medians and min-max over the rounds):

1. **batches**: making CIFAR-shaped training batches of 512 (crop with 4-px padding + flip + normalise), no
   model: the device pipeline (``ResidentImageDataset.batch_transform``) vs torchvision's per-image transforms
   through a DataLoader with 0 workers and with ``auto`` workers.
2. **short run**: LeNet-300-100 on MNIST-shaped data, the ``lenet_300_100-mnist`` preset's recipe for a few
   epochs, device pipeline vs loader (0 and auto workers): samples/s of training and test accuracy.
3. **train**: samples/s of one IMP level's training steps (the model's ``lth imp`` preset; a ticket at 80 % and
   95 % sparsity by magnitude, and dense) for LeNet-300-100 (MNIST-shaped), Conv-4 and ResNet-20 (CIFAR-shaped),
   per pipeline (device, loader 0 workers, loader auto workers), eager, and compiled (``--training.compile``,
   device pipeline; ``--compile-models``, by default LeNet only: compiling a conv net on a CPU takes minutes).

Results: ``bench/results/<date>-<device>-train_throughput.{json,md}``. ``--smoke``: tiny sizes, LeNet only,
no compilation, nothing written (CI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import env_info, write_results  # noqa: E402
from bench.data_files import unchecked_cifar, write_cifar, write_mnist  # noqa: E402
from lth_kernels.data import create_dataset, resolve_num_workers  # noqa: E402
from lth_kernels.training import Callback, Trainer  # noqa: E402

PRESETS = {"lenet_300_100": ("lenet_300_100-mnist", "mnist"), "conv4": ("conv4-cifar10", "cifar10"),
           "cifar_resnet_20": ("cifar_resnet_20-cifar10", "cifar10")}
SPARSITIES = (0.0, 0.8, 0.95)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (median, min-max; batches: +1)")
    p.add_argument("--models", default=",".join(PRESETS), help="comma separated: " + ", ".join(PRESETS))
    p.add_argument("--steps", type=int, default=0, help="timed steps per training cell (0: per model)")
    p.add_argument("--conv-rounds", type=int, default=1, help="rounds of the conv-net cells (compute-bound on a CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: lth imp's rule, one thread for "
                                                          "models under 1M parameters, else all cores; batches: 1)")
    p.add_argument("--epochs", type=int, default=2, help="length of the LeNet short run")
    p.add_argument("--compile-models", default="lenet_300_100",
                   help="models also measured compiled (comma separated; compiling a conv net on a CPU takes minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, LeNet only, no compile, nothing written")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--device", default=None, help="default: cuda when available")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ------------------------------------------------------------------------------------------------ 1. batches


def batch_providers(root: str, device: torch.device, batch: int, workers: int) -> dict:
    """name -> callable making ``n`` batches and returning the perf_counter time its timed part began."""
    from torch.utils.data import DataLoader

    with unchecked_cifar():
        resident = create_dataset("cifar10", data_dir=root)[0]
        tv = create_dataset("cifar10", data_dir=root, pipeline="loader")[0]
    x_all = resident.tensors[0].to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def device_batches(n):
        t0 = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(0, len(x_all), (batch,), device=device, generator=gen)
            resident.batch_transform(x_all[idx], gen)
        _sync(device)
        return t0

    loaders = {w: DataLoader(tv, batch_size=batch, shuffle=True, num_workers=w, persistent_workers=w > 0,
                             prefetch_factor=2 if w else None, drop_last=True) for w in (0, workers)}

    def loader_batches(w):
        def run(n):
            # A fresh pass per call (persistent workers restart their prefetching): the first batch, which
            # the workers made while the other providers ran, is not counted.
            it = iter(loaders[w])
            next(it)
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            return t0
        return run

    return {"device": device_batches, "torchvision, 0 workers": loader_batches(0),
            f"torchvision, {workers} workers": loader_batches(workers)}


def bench_batches(root: str, device, rounds: int, batch: int, workers: int, smoke: bool) -> list[dict]:
    providers = batch_providers(root, device, batch, workers)
    counts = {name: (2 if smoke else 40) if name == "device" else (1 if smoke else 8) for name in providers}
    for fn in providers.values():  # warm-up: workers started, caches hot
        fn(1)
    rates = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            t0 = fn(counts[name])
            rates[name].append(counts[name] * batch / (time.perf_counter() - t0))
    base = statistics.median(rates["torchvision, 0 workers"])
    rows = []
    for name, r in rates.items():
        s = _summary(r)
        rows.append({"part": "batches", "provider": name, "batch": batch, "images_per_s": round(s["median"]),
                     "min": round(s["min"]), "max": round(s["max"]), "vs_torchvision_0": round(s["median"] / base, 2)})
    return rows


# ------------------------------------------------------------------------------------------------ 2./3. training


class StepTimer(Callback):
    """Wall time of steps ``warm`` .. ``end`` (device-synchronised at both ends)."""

    def __init__(self, warm: int, end: int):
        self.warm, self.end, self.t0, self.seconds = warm, end, None, None

    def on_step_start(self, trainer, step):
        if step == self.warm:
            _sync(trainer.device)
            self.t0 = time.perf_counter()

    def on_after_optimizer_step(self, trainer, step):
        if step == self.end:
            _sync(trainer.device)
            self.seconds = time.perf_counter() - self.t0


def _preset(model: str):
    from lth_kernels.workflows.imp import ImpHparams

    return ImpHparams.from_preset(PRESETS[model][0])


def _new_model(model: str, info, sparsity: float):
    from lth_kernels.models import create_model
    from lth_kernels.tickets import prune

    torch.manual_seed(0)
    net = create_model(model, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.img_size)
    if sparsity:
        prune(net, "magnitude", sparsity).apply(net)
    return net


THREADS = {"fixed": 0}  # --threads


def _threads(net) -> int:
    """``--threads``, else ``lth imp``'s rule (``threads="auto"``): one thread for small models on the CPU,
    else all cores."""
    from lth_kernels.workflows.imp.runner import ImpRunner

    if THREADS["fixed"]:
        return THREADS["fixed"]
    small = sum(p.numel() for p in net.parameters()) < ImpRunner.SMALL_MODEL
    return 1 if small else resolve_num_workers("auto")


def _data(root: str, name: str, pipeline: str, workers: int):
    with unchecked_cifar():
        return create_dataset(name, data_dir=root, pipeline=pipeline, num_workers=workers)


def train_cell(root, device, model, pipeline, workers, sparsity, compiled, warm, steps) -> float:
    """Samples/s of steps ``warm .. warm + steps`` of the preset's training."""
    hp = _preset(model)
    train, test, info = _data(root, PRESETS[model][1], pipeline, workers)
    net = _new_model(model, info, sparsity)
    torch.set_num_threads(_threads(net) if device.type == "cpu" else torch.get_num_threads())
    timer = StepTimer(warm, warm + steps)
    training = hp.training.replace(training_steps=f"{warm + steps}it", eval_every="0it", compile=compiled)
    trainer = Trainer(net, train, test, training, batch_size=hp.dataset.batch_size, device=device,
                      callbacks=[timer], eval_at_start=False, progress=False)
    assert trainer.feed.pipeline == pipeline
    trainer.train()
    return steps * hp.dataset.batch_size / timer.seconds


def short_run(root, device, pipeline, workers, epochs) -> tuple[float, float]:
    """(training samples/s, test accuracy) of LeNet-300-100 for ``epochs`` on the MNIST-shaped data."""
    hp = _preset("lenet_300_100")
    train, test, info = _data(root, "mnist", pipeline, workers)
    net = _new_model("lenet_300_100", info, 0.0)
    torch.set_num_threads(_threads(net) if device.type == "cpu" else torch.get_num_threads())
    training = hp.training.replace(training_steps=f"{epochs}ep", eval_every="0it")
    metrics = Trainer(net, train, test, training, batch_size=hp.dataset.batch_size, device=device,
                      eval_at_start=False, progress=False).train().metrics
    return metrics["samples_per_s"], metrics["test_acc"]


def _pipelines(workers: int) -> list[tuple[str, int]]:
    return [("device", 0), ("loader", 0), ("loader", workers)]


def bench_short_run(root, device, rounds, workers, epochs) -> list[dict]:
    rates, accs = {}, {}
    for _ in range(rounds):
        for p, w in _pipelines(workers):
            r, a = short_run(root, device, p, w, epochs)
            rates.setdefault((p, w), []).append(r)
            accs.setdefault((p, w), []).append(a)
    base = statistics.median(rates["loader", 0])
    rows = []
    for (p, w), r in rates.items():
        s = _summary(r)
        rows.append({"part": "short run", "model": "lenet_300_100", "data": "mnist-shaped", "epochs": epochs,
                     "pipeline": p, "workers": w, "samples_per_s": round(s["median"]), "min": round(s["min"]),
                     "max": round(s["max"]), "vs_loader_0": round(s["median"] / base, 2),
                     "test_acc": statistics.median(accs[p, w])})
    return rows


def bench_train(root, device, rounds, workers, models, compile_, steps_override, smoke, conv_rounds=1) -> list[dict]:
    cells = []
    for model in models:
        for sparsity in SPARSITIES:
            for p, w in _pipelines(workers):
                # On a CPU a conv net is compute-bound and loader workers only take cores from it.
                if not (device.type == "cpu" and model != "lenet_300_100" and w > 0):
                    cells.append((model, p, w, sparsity, False))
            if model in compile_:
                cells.append((model, "device", 0, sparsity, True))
    steps = {"lenet_300_100": 30, "conv4": 3, "cifar_resnet_20": 2} if device.type == "cpu" else \
        {"lenet_300_100": 200, "conv4": 100, "cifar_resnet_20": 50}
    rates = {}
    for r in range(max(rounds, conv_rounds)):
        for cell in cells:
            if r >= (rounds if cell[0] == "lenet_300_100" else conv_rounds):
                continue
            model = cell[0]
            n = steps_override or (5 if smoke else steps[model])
            warm = (2 if model == "lenet_300_100" else 1) if not cell[4] else 4
            rates.setdefault(cell, []).append(train_cell(root, device, *cell, warm=warm, steps=n))
            print(f"  {cell}: {rates[cell][-1]:.0f} samples/s", flush=True)
    rows = []
    for (model, p, w, sparsity, compiled), r in rates.items():
        s = _summary(r)
        base = statistics.median(rates[model, "loader", 0, sparsity, False])
        rows.append({"part": "train", "model": model, "data": PRESETS[model][1] + "-shaped", "sparsity": sparsity,
                     "pipeline": p, "workers": w, "compiled": compiled, "samples_per_s": round(s["median"], 1),
                     "min": round(s["min"], 1), "max": round(s["max"], 1), "vs_loader_0": round(s["median"] / base, 2)})
    return rows


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        print(f"--models: unknown {unknown}; choose from {', '.join(PRESETS)}")
        return 2
    if args.smoke:
        models, args.rounds, args.compile_models = ["lenet_300_100"], 1, ""
    workers = resolve_num_workers("auto")
    sizes = (600, 200, 300, 100) if args.smoke else (4000, 1000, 6000, 1000)
    env = env_info(device)
    env["loader_workers_auto"] = workers
    threads_before = torch.get_num_threads()
    THREADS["fixed"] = args.threads
    env["threads"] = args.threads or "lth imp's rule"
    with tempfile.TemporaryDirectory() as root:
        write_mnist(root, sizes[0], sizes[1])
        write_cifar(root, sizes[2], sizes[3])
        env["data"] = (f"MNIST-shaped {sizes[0]}/{sizes[1]}, CIFAR-shaped {sizes[2]}/{sizes[3]} train/test images, "
                       "torchvision's file formats")
        try:
            torch.set_num_threads(args.threads or 1)
            rows = bench_batches(root, device, 1 if args.smoke else args.rounds + 1, 128 if args.smoke else 512,
                                 workers, args.smoke)
            for r in rows:
                print(r, flush=True)
            rows += bench_short_run(root, device, args.rounds, workers, 1 if args.smoke else args.epochs)
            for r in rows[-3:]:
                print(r, flush=True)
            rows += bench_train(root, device, args.rounds, workers, models,
                                [m for m in args.compile_models.split(",") if m], args.steps, args.smoke,
                                args.conv_rounds)
        finally:
            torch.set_num_threads(threads_before)
    for r in rows:
        if r["part"] == "train":
            print(r)
    if args.smoke:
        print("smoke run: nothing written")
    elif not args.no_write:
        print("wrote", write_results("train_throughput", rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
