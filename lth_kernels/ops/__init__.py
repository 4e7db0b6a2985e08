"""Public ops. Each is a ``torch.library`` op under ``lth_kernels::`` with a fake and, where it is
differentiable, autograd; the backend (reference / cpu / cuda / triton) is chosen per call."""

from lth_kernels.ops._registry import resolve  # noqa: F401
from lth_kernels.ops.mask_meta import pack_mask, tile_occupancy, unpack_mask  # noqa: F401
from lth_kernels.ops.masked_matmul import masked_conv2d, masked_linear, masked_linear_scores  # noqa: F401
