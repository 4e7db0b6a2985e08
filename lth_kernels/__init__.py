"""lth_kernels: sparse kernels and lottery-ticket workflows for PyTorch."""

__version__ = "0.1.0"

from lth_kernels import (
    _ext,  # noqa: F401  (loads _C if built; says why once if not)
    ops,  # noqa: F401
)
