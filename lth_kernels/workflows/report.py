"""Deprecated alias of ``lth_kernels.workflows.imp.report`` (moved in 0.2; this alias goes in 0.3)."""

import warnings

from lth_kernels.workflows.imp.report import *  # noqa: F403

warnings.warn("lth_kernels.workflows.report moved to lth_kernels.workflows.imp.report",
              DeprecationWarning, stacklevel=2)
