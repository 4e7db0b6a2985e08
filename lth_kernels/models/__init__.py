"""Model registry: ``create_model(name, *, num_classes, in_chans, img_size, **kwargs)``.

Names (``model_names()`` lists them): ``lenet_<n>[_<n>...]`` / ``mlp_<n>[_<n>...]`` (open_lth LeNet MLPs,
e.g. ``lenet_300_100``), ``lenet5``, ``conv2`` / ``conv4`` / ``conv6`` (Frankle & Carbin),
``cifar_resnet_<6n+2>[_<width>]`` and ``cifar_vgg_<11|13|16|19>`` (open_lth), ``jackpot_resnet_<6n+2>`` and
``jackpot_vgg_<n>`` (lottery jackpots' CIFAR nets), ``vit_tiny`` / ``vit_small``
(timm VisionTransformer) and ``timm:<name>``. Every model carries ``model_name`` and ``default_prune_exclude``
(fnmatch globs over parameter names); ``prunable_parameter_names(model)`` applies them.
"""

from lth_kernels.models import cifar_resnet, cifar_vgg, conv, jackpot_cifar, lenet, vit  # noqa: F401  (register)
from lth_kernels.models._registry import (
    create_model,
    load_weights,
    model_names,
    prunable_parameter_names,
    register_model,
    strip_prefixes,
)
from lth_kernels.models.initializers import initialize

__all__ = ["create_model", "initialize", "load_weights", "model_names", "prunable_parameter_names",
           "register_model", "strip_prefixes"]
