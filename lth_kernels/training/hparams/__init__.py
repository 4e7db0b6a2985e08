"""Typed hparams dataclasses: the one source of truth for a run, its JSON file, its hash and its CLI.

A workflow's hparams are a frozen dataclass whose fields are scalars (bool, int, float, str, optional
variants), ``tuple[str, ...]``, ``dict[str, Any]`` or nested ``Hparams`` groups. From it come:

* ``to_dict``/``from_dict``/``to_json``/``from_json`` (strict: unknown keys are errors),
* ``non_default()`` and ``hashname()`` (a short hash of the non-default values, so adding a new hparam
  with a default keeps old run names valid, as in open_lth),
* ``add_args``/``from_args`` generating ``--training.lr 0.1``-style flags, and ``parse_cli`` adding
  ``--preset NAME`` (overrides registered by workflows with ``register_preset``), with ``--help``
  showing the *effective* values (defaults after the preset).

Three modules: ``base`` (the dataclass machinery: fields, parsing, hashing), ``cli`` (presets and the
generated parser), ``groups`` (the dataset/model/training/pruning groups every workflow shares).
No torch import anywhere here: ``--help`` and validation must be instant.
"""

from lth_kernels.training.hparams.base import Hparams, HparamsError, hfield
from lth_kernels.training.hparams.cli import HparamsParser, parse_cli, presets, register_preset
from lth_kernels.training.hparams.groups import DatasetHparams, ModelHparams, PruningHparams, TrainingHparams

__all__ = ["DatasetHparams", "Hparams", "HparamsError", "HparamsParser", "ModelHparams", "PruningHparams",
           "TrainingHparams", "hfield", "parse_cli", "presets", "register_preset"]
