"""Deprecated alias of ``lth_kernels.workflows.elastic.report`` (moved in 0.2; this alias goes in 0.3)."""

import warnings

from lth_kernels.workflows.elastic.report import *  # noqa: F403

warnings.warn("lth_kernels.workflows.elastic_report moved to lth_kernels.workflows.elastic.report",
              DeprecationWarning, stacklevel=2)
