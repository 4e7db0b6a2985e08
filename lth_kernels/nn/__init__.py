"""Drop-in sparse modules and ``sparsify``: no trainer, no workflow knowledge."""

from lth_kernels.nn.block_sparse import BlockSparseLinear  # noqa: F401
from lth_kernels.nn.sparse_attention import SparseAttention, ticketize_vit  # noqa: F401
from lth_kernels.nn.ticket_patch_embed import TicketPatchEmbed  # noqa: F401
