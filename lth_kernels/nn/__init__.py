"""Drop-in sparse modules and ``sparsify``: no trainer, no workflow knowledge."""

from lth_kernels.nn.block_sparse import BlockSparseLinear  # noqa: F401
