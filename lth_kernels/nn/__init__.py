"""Drop-in sparse modules and ``sparsify``: no trainer, no workflow knowledge."""

from lth_kernels.nn.block_sparse import BlockSparseLinear  # noqa: F401
from lth_kernels.nn.mask_guard import MaskGuard, guard_optimizer  # noqa: F401
from lth_kernels.nn.masked import MaskedConv2d, MaskedLinear  # noqa: F401
from lth_kernels.nn.scored import ScoredConv2d, ScoredLinear, score_layers, unscore_layers  # noqa: F401
from lth_kernels.nn.sparse_attention import SparseAttention, ticketize_vit  # noqa: F401
from lth_kernels.nn.sparsify import canonical_name, current_masks, densify, masked_modules, sparsify  # noqa: F401
from lth_kernels.nn.ticket_patch_embed import TicketPatchEmbed  # noqa: F401
