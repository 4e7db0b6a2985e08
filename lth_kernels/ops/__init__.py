"""Public ops. Each is a ``torch.library`` op under ``lth_kernels::`` with a fake and, where it is
differentiable, autograd; the backend (reference / cpu / cuda / triton) is chosen per call."""

from lth_kernels.ops._registry import resolve  # noqa: F401
from lth_kernels.ops.block_sparse import (  # noqa: F401
    BlockSparseLayout,
    block_layout,
    block_sparse_linear,
    dds,
    detect_block_structure,
    dsd,
    sdd,
)
from lth_kernels.ops.cpu_sparse import SparseWeight, cpu_sparse_linear, use_sparse_cpu  # noqa: F401
from lth_kernels.ops.mask_meta import pack_mask, tile_occupancy, unpack_mask  # noqa: F401
from lth_kernels.ops.masked_matmul import masked_conv2d, masked_linear, masked_linear_scores  # noqa: F401
from lth_kernels.ops.semi_structured import mask_2to4, semi_structured_linear  # noqa: F401
from lth_kernels.ops.sparse_attention import (  # noqa: F401
    BlockMask,
    block_mask_from_dense,
    local_window_block_mask,
    sparse_attention,
    strided_block_mask,
    swin_window_block_mask,
)
from lth_kernels.ops.token_gather import gather_tokens, scatter_tokens  # noqa: F401
