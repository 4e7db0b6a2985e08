"""Whole-model CPU inference with tickets: ``python bench/cpu_sparse.py --model`` (this file has no entry of its own).

Models (random initialisation, nothing downloaded): timm DeiT-S at 224x224, LeNet-300-100 (28x28), and timm
ResNet-50 (224x224, channels_last, batch 1) for its 1x1 convs. Tickets: layer-wise magnitude masks at 80 / 90 / 95 %
on the model's prunable layers (its default exclusions apply). The sparsified model runs in eval mode under
``no_grad``, each masked layer choosing by itself (``MaskedLinear`` / ``MaskedConv2d`` and the dispatch table)
between the CSR kernel and the dense op; the baseline is the same model densified (same weights, pruned ones 0),
dense F.linear / conv. Both are timed interleaved, ``max(2, reps // 5)`` repetitions a round (20x that for LeNet)
after one untimed call each; images/s from the median over rounds of each round's minimum, with the spread of the
sparse model's round minima. ``--models deit_s,lenet_300_100`` picks models.
"""

from __future__ import annotations

import copy
import statistics
import time

MODELS = [  # (label, create_model name, num_classes, in_chans, image size, channels_last, batches, reps factor)
    ("deit_s", "timm:deit_small_patch16_224", 1000, 3, 224, False, (1, 16), 1),
    ("lenet_300_100", "lenet_300_100", 10, 1, 28, False, (1, 16), 20),  # ~100 us a call: more reps
    ("resnet50", "timm:resnet50", 1000, 3, 224, True, (1,), 1),  # 1x1 convs; batch 16 costs minutes a round
]
SPARSITIES = [0.8, 0.9, 0.95]


def magnitude_ticket(model, names, sparsity: float) -> dict:
    """Per layer, keep the largest-magnitude (1 - sparsity) fraction of the weights."""
    import torch

    params = dict(model.named_parameters())
    ticket = {}
    for name in names:
        w = params[name].detach().abs().flatten()
        keep = max(1, round(w.numel() * (1 - sparsity)))
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[w.topk(keep).indices] = True
        ticket[name] = mask.view(params[name].shape)
    return ticket


def run_models(args, env: dict) -> int:
    import torch

    from bench.common import write_results
    from lth_kernels.models import create_model, prunable_parameter_names
    from lth_kernels.nn.sparsify import densify, masked_modules, sparsify

    reps = max(2, args.reps // 5)
    models = [m for m in MODELS if m[0] in args.models.split(",")] if args.models else MODELS
    models = MODELS[1:2] if args.quick else models
    sparsities = SPARSITIES[1:2] if args.smoke else SPARSITIES
    print({**env, "reps": reps})
    cells = {}
    built = {}
    for rnd in range(args.rounds):
        for label, name, classes, chans, size, channels_last, batches, factor in models:
            batches = batches[:1] if args.smoke else batches
            for s in sparsities:
                if (label, s) not in built:  # one ticket per model and sparsity, reused by every round
                    torch.manual_seed(0)
                    model = create_model(name, num_classes=classes, in_chans=chans, img_size=size)
                    ticket = magnitude_ticket(model, prunable_parameter_names(model), s)
                    sparse = sparsify(model, ticket).eval()
                    dense = densify(copy.deepcopy(sparse)).eval()
                    if channels_last:
                        sparse, dense = (m.to(memory_format=torch.channels_last) for m in (sparse, dense))
                    built[(label, s)] = (sparse, dense)
                sparse, dense = built[(label, s)]
                for b in batches:
                    x = torch.randn(b, chans, size, size)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.no_grad():
                        want, got = dense(x), sparse(x)
                        torch.testing.assert_close(got, want, atol=1e-3 * float(want.abs().max()), rtol=1e-3)
                        routed = sum("_cpu_sparse_weight" in m.__dict__ for m in masked_modules(sparse).values())
                        t = {"dense": [], "sparse": []}
                        for _ in range(reps * factor):
                            for key, m in (("dense", dense), ("sparse", sparse)):
                                t0 = time.perf_counter()
                                m(x)
                                t[key].append(time.perf_counter() - t0)
                    cell = cells.setdefault((label, b, s), {"dense": [], "sparse": [], "routed": routed,
                                                            "masked": len(masked_modules(sparse))})
                    for key in ("dense", "sparse"):  # the minimum: preemption only adds time (bench/cpu_sparse.py)
                        cell[key].append(min(t[key]))
                print(f"round {rnd + 1}/{args.rounds}: {label} {s:.0%} done", flush=True)
    rows = []
    for (label, b, s), c in cells.items():
        dense_s, sparse_s = statistics.median(c["dense"]), statistics.median(c["sparse"])
        rows.append({"model": label, "batch": b, "sparsity": s, "layers_on_kernel": f"{c['routed']}/{c['masked']}",
                     "dense_img_s": b / dense_s, "sparse_img_s": b / sparse_s, "x_vs_dense": dense_s / sparse_s,
                     "spread_pct": 100 * (max(c["sparse"]) - min(c["sparse"])) / sparse_s})
        r = rows[-1]
        print(f"{label:>14} B={b:<3} s={s:.2f}  dense {r['dense_img_s']:8.1f} img/s  sparse {r['sparse_img_s']:8.1f} "
              f"img/s  x{r['x_vs_dense']:5.2f}  ({r['layers_on_kernel']} layers on the kernel, spread "
              f"{r['spread_pct']:.1f} %)")
    if args.no_write:
        return 0
    suffix = "cpu_sparse_model" + ("-quick" if args.quick else "") + (f"-{args.models.replace(',', '-')}" if args.models
                                                                      else "")
    suffix += f"-t{args.threads}" if args.threads != 2 else ""
    print(f"wrote {write_results(suffix, rows, {**env, 'reps': reps})} (+ .md)")
    return 0
