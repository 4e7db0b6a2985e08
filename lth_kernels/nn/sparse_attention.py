"""Attention over kept tokens / block masks / packed sequences, and timm ViTs that run on a token ticket.

``SparseAttention`` has the parameters of timm's ``Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``norm``,
``proj``) under the same names, so it loads its state dict; ``SparseAttention.from_timm(attn)`` reuses the
modules of an existing one. ``ticketize_vit(model)`` turns a timm ``VisionTransformer`` (ViT/DeiT) into a
model whose ``forward(images, keep_index)`` embeds only the kept patches (``TicketPatchEmbed``) and runs
every block on K + 1 tokens; its state dict is unchanged, so dense checkpoints load into it and back.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn.ticket_patch_embed import TicketPatchEmbed
from lth_kernels.ops.sparse_attention import BlockMask, sparse_attention
from lth_kernels.ops.token_gather import gather_tokens, scatter_tokens


class SparseAttention(nn.Module):
    """Multi-head self-attention (timm ``Attention`` parameters) with kept-token, block-mask and varlen modes.

    ``forward(x, keep_index=None, *, block_mask=None, cu_seqlens=None, max_seqlen=None, compact=True)``:
      * x (B, N, C) and nothing else: dense attention through SDPA (as timm);
      * ``keep_index`` (B, K): the kept tokens are gathered *before* the qkv projection (the cheapest exact
        form: qkv, attention and proj all run on K tokens); returns (B, K, C), or (B, N, C) with zero rows
        for the dropped tokens when ``compact=False`` (a drop-in residual branch);
      * ``block_mask``: :func:`lth_kernels.ops.sparse_attention` with that mask (over the kept tokens if
        ``keep_index`` is given too);
      * ``cu_seqlens`` + ``max_seqlen``: x is packed (T, C), varlen attention per sequence.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: must divide dim={dim}, got {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = dim
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm, self.k_norm, self.norm = nn.Identity(), nn.Identity(), nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.backend = backend

    @classmethod
    def from_timm(cls, attn: nn.Module, backend: str | None = None) -> SparseAttention:
        """Wraps the modules of a timm ``Attention`` (shared, not copied): same parameters, same state dict."""
        if getattr(attn, "gate", None) is not None:
            raise ValueError("attn: gated timm Attention is not supported")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads, new.head_dim = attn.num_heads, attn.head_dim
        new.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        new.scale = attn.scale
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"):
            setattr(new, name, getattr(attn, name, None) or nn.Identity())
        new.backend = backend
        return new

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        qkv = self.qkv(x).reshape(*lead, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4) if x.dim() == 3 else qkv.permute(1, 0, 2, 3)  # (3, B, H, N, d) | (3, T, H, d)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.norm(o)))

    def forward(self, x: torch.Tensor, keep_index: torch.Tensor | None = None, *, block_mask: BlockMask | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None, compact: bool = True,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        sparse_kw = dict(scale=self.scale, backend=self.backend)
        if cu_seqlens is not None:
            self._no_dropout("cu_seqlens")
            q, k, v = self._qkv(x)
            o = sparse_attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, **sparse_kw)
            return self._out(o.reshape(x.shape[0], self.attn_dim))
        full = x
        if keep_index is not None:
            x = gather_tokens(x, keep_index)
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        if block_mask is not None:
            self._no_dropout("block_mask")
            o = sparse_attention(q, k, v, block_mask=block_mask, **sparse_kw)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        y = self._out(o.transpose(1, 2).reshape(b, n, self.attn_dim))
        if keep_index is not None and not compact:
            y = scatter_tokens(full.new_zeros(full.shape[0], full.shape[1], y.shape[-1]), keep_index, y,
                               checked=False)
        return y

    def _no_dropout(self, what: str) -> None:
        if self.training and self.attn_drop.p > 0:
            raise ValueError(f"{what}: attention dropout is not supported by the sparse kernels (attn_drop="
                             f"{self.attn_drop.p}); set it to 0")


def _ticket_forward_features(self, x: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
    x = self.patch_embed(x, keep_index, pos_embed=self.pos_embed, cls_token=self.cls_token)
    x = self.pos_drop(x)
    x = self.patch_drop(x)
    x = self.norm_pre(x)
    x = self.blocks(x)
    return self.norm(x)


def _ticket_forward(self, x: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
    return self.forward_head(self.forward_features(x, keep_index))


def ticketize_vit(model: nn.Module, *, sparse_attention_modules: bool = True, backend: str | None = None):
    """Makes a timm ``VisionTransformer`` run on a data-level ticket, in place; returns the model.

    Afterwards ``model(images, keep_index)`` embeds only the kept patches (B, K) with their own position
    embeddings, prepends CLS and runs all blocks on K + 1 tokens (``keep_index=None``: all patches, same
    result as before). Parameters and state-dict keys are unchanged. With ``sparse_attention_modules`` the
    blocks' ``Attention`` modules become :class:`SparseAttention` (same parameters) so that a later stage
    can pass keep indices or block masks to them.
    """
    needed = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm_pre", "patch_drop", "pos_drop", "norm")
    missing = [n for n in needed if not hasattr(model, n)]
    if missing:
        raise ValueError(f"model: expected a timm VisionTransformer, {type(model).__name__} lacks {missing}")
    if getattr(model, "reg_token", None) is not None or getattr(model, "dynamic_img_size", False):
        raise ValueError("model: register tokens and dynamic_img_size are not supported by ticketize_vit")
    if model.pos_embed is None:
        raise ValueError("model: pos_embed is None; kept patches need their position embedding")
    pe = model.patch_embed
    if isinstance(pe, TicketPatchEmbed):
        return model
    proj = pe.proj
    ticket = TicketPatchEmbed(pe.img_size, proj.kernel_size, proj.in_channels, proj.out_channels,
                              cls_token=model.cls_token is not None,
                              pos_embed_has_cls=model.cls_token is not None and not model.no_embed_class,
                              bias=proj.bias is not None, norm=pe.norm, own_embeddings=False)
    ticket.proj = proj  # the same module: "patch_embed.proj.*" keys and values unchanged
    ticket.norm = pe.norm
    model.patch_embed = ticket
    if sparse_attention_modules:
        for blk in model.blocks:
            if type(blk.attn).__name__ == "Attention":
                blk.attn = SparseAttention.from_timm(blk.attn, backend=backend)
    model.forward_features = types.MethodType(_ticket_forward_features, model)
    model.forward = types.MethodType(_ticket_forward, model)
    return model
