"""Deprecated alias of ``lth_kernels.workflows.imp.runner`` (moved in 0.2; this alias goes in 0.3)."""

import warnings

from lth_kernels.workflows.imp.runner import *  # noqa: F403

warnings.warn("lth_kernels.workflows.imp_runner moved to lth_kernels.workflows.imp.runner",
              DeprecationWarning, stacklevel=2)
