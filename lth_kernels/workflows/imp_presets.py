"""Deprecated alias of ``lth_kernels.workflows.imp.presets`` (moved in 0.2; this alias goes in 0.3)."""

import warnings

from lth_kernels.workflows.imp.presets import *  # noqa: F403

warnings.warn("lth_kernels.workflows.imp_presets moved to lth_kernels.workflows.imp.presets",
              DeprecationWarning, stacklevel=2)
