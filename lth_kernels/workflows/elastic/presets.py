"""``lth elastic --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from typing import Any

from lth_kernels.workflows.elastic.hparams import WORKFLOW


def _imp_preset(name: str, **changes) -> dict[str, Any]:
    from lth_kernels.workflows.imp.presets import PRESETS

    return {**{f"imp.{k}": v for k, v in PRESETS[name].items()}, **{f"imp.{k}": v for k, v in changes.items()}}


PRESETS = {
    "mlp-digits": {},
    # CIFAR-10 ResNets, Appendix Table 4: 160 epochs, SGD 0.1, rewind 1000 iterations, 10 levels of 20%
    # (89.26% sparsity). ResNet-20 -> 32 -> 56 and back 56 -> 32.
    "cifar_resnet-cifar10": {**_imp_preset("cifar_resnet_20-cifar10", rewind="1000it", levels=10),
                             "pairs": ("20:32", "32:56", "56:32")},
    # ImageNet basic-block ResNets (Table 1): source ResNet-26 (timm resnet18 with layers 2,3,4,3), 6 levels
    # of 20% (73.79%), rewind 5 epochs, to ResNet-18 and ResNet-34.
    "resnet-imagenet": {**_imp_preset("resnet50-imagenet", levels=6, **{"model.name": "timm:resnet18",
                                                                        "model.kwargs": {"layers": [2, 3, 4, 3]}}),
                        "pairs": ("26:18", "26:34")},
}


def register_presets() -> None:
    from lth_kernels.training.hparams import register_preset

    for name, overrides in PRESETS.items():
        register_preset(WORKFLOW, name, overrides)


register_presets()
