"""Vision Transformers and any timm model, always built without pretrained weights (no download, ever).

``vit_tiny`` (embed 192, 12 blocks, 3 heads) and ``vit_small`` (384, 12, 6) are timm ``VisionTransformer``s
for any input size; every ``VisionTransformer`` argument can be overridden by keyword (``depth=4``,
``patch_size=2``, ``embed_dim=...``). The default patch size is the largest ``p <= 16`` dividing both sides
with at least 7 patches per side (224 -> 16, 32 -> 4, 28 -> 4, 8 -> 1), so small data sets get a usable
token grid.

``timm:<name>`` calls ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=..., **kwargs)``;
``img_size`` is passed too when the architecture takes it (transformers) and left out for CNNs.

Pruning defaults: for ViT-style models (those with a ``patch_embed``) the patch embedding and the classifier
head are not pruned (they are small, and pruning them removes whole input pixels / output classes; a common
researcher default). Other timm models exclude nothing, as open_lth does for ResNets. Local weights load with
``checkpoint_path=`` (see ``create_model``). Initialisation is timm's own.
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from lth_kernels.models._registry import register_model

_VIT_PRESETS = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
}


def default_patch_size(img_size: tuple[int, int]) -> int:
    """Largest p <= 16 dividing h and w with >= 7 patches per side; 1 when none does."""
    h, w = img_size
    for p in range(16, 0, -1):
        if h % p == 0 and w % p == 0 and h // p >= 7 and w // p >= 7:
            return p
    return 1


def _vit_exclusions(model: nn.Module) -> tuple[str, ...]:
    """Patch embedding + classifier weights for ViT-style models, nothing otherwise."""
    if not hasattr(model, "patch_embed"):
        return ()
    globs = ["patch_embed.*weight"]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "head")
    for c in (classifier,) if isinstance(classifier, str) else tuple(classifier):
        globs.append(f"{c}.weight")
    params = dict(model.named_parameters())
    # Keep only globs that name something, so the defaults never refer to a parameter the model lacks.
    return tuple(g for g in globs if any(fnmatch.fnmatchcase(n, g) for n in params))


def _make_vit(preset: dict):
    def build(name, spec, *, num_classes, in_chans, img_size, **kwargs):
        from timm.models.vision_transformer import VisionTransformer

        args = {**preset, "patch_size": default_patch_size(img_size), **kwargs}
        p = args["patch_size"]
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)
        if img_size[0] % ph or img_size[1] % pw:
            raise ValueError(f"patch_size: {p} does not divide img_size {img_size[0]}x{img_size[1]}")
        model = VisionTransformer(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **args)
        model.default_prune_exclude = _vit_exclusions(model)
        return model

    return build


for _name, _preset in _VIT_PRESETS.items():
    register_model(_name)(_make_vit(_preset))


def _timm(name, spec, *, num_classes, in_chans, img_size, init: str = "timm", batchnorm_init: str = "uniform",
          **kwargs):
    """A timm model, initialised by timm (``init="timm"``) or by open_lth's initialisers (``init`` one of
    ``initializers.WEIGHT_INITS``, e.g. ``kaiming_normal``, with ``batchnorm_init``: open_lth's ResNet-50 has
    Kaiming-normal convs and U[0, 1) BN scales, where timm zeroes the last BN scale of every block)."""
    import timm

    from lth_kernels.models.initializers import WEIGHT_INITS, initialize

    if init != "timm" and init not in WEIGHT_INITS:
        raise ValueError(f"init: unknown initialiser {init!r}; valid: timm, {', '.join(WEIGHT_INITS)}")

    timm_name = spec["timm_name"]
    if not timm.is_model(timm_name):
        raise ValueError(f"model: timm has no model {timm_name!r} (see timm.list_models())")
    if kwargs.pop("pretrained", False):
        raise ValueError("pretrained: timm weights are never downloaded; pass checkpoint_path=<local file>")
    args = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans, **kwargs}
    try:
        model = timm.create_model(timm_name, img_size=img_size, **args)
    except TypeError as e:
        # CNN constructors take no img_size; transformers need it. Retry only for that exact complaint.
        if "img_size" not in str(e):
            raise
        model = timm.create_model(timm_name, **args)
    if init != "timm":
        initialize(model, init, batchnorm_init)
    model.default_prune_exclude = _vit_exclusions(model)
    return model


register_model(re.compile(r"timm:(?P<timm_name>.+)"), display="timm:<name>")(_timm)
