"""Deprecated alias of ``lth_kernels.workflows.imp.branches`` (moved in 0.2; this alias goes in 0.3)."""

import warnings

from lth_kernels.workflows.imp.branches import *  # noqa: F403

warnings.warn("lth_kernels.workflows.imp_branches moved to lth_kernels.workflows.imp.branches",
              DeprecationWarning, stacklevel=2)
