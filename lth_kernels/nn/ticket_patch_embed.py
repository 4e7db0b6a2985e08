"""Patch embedding for data-level tickets: only the kept patches are embedded.

``TicketPatchEmbed(images, keep_index)`` takes images (B, C, H, W) and the kept patch indices (B, K)
(row-major over the patch grid) and returns (B, K [+1], D): the projection of each kept patch plus *its own*
position embedding, with the CLS token (and its position embedding) prepended when there is one. The patch
pixels of the kept patches are gathered straight from the image (a strided view, one copy of K patches),
then one GEMM: the dropped patches are never projected, unlike "embed everything, then gather".
"""

from __future__ import annotations

import torch
from torch import nn

from lth_kernels.ops.token_gather import check_index


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class TicketPatchEmbed(nn.Module):
    """Conv-free patch embedding over kept patches, weight-compatible with timm's ``PatchEmbed``.

    Parameters: ``proj`` (a ``Conv2d`` with kernel = stride = patch, as in timm, so state dicts load),
    ``pos_embed`` (1, N [+1], D), optional ``cls_token`` (1, 1, D) and ``norm`` (applied to the patch
    projections, as timm's ``PatchEmbed.norm``). ``pos_embed_has_cls`` says whether ``pos_embed`` holds a CLS
    entry first (timm default; False for ``no_embed_class`` models). With ``own_embeddings=False`` the module
    holds only ``proj``/``norm`` and ``forward`` takes ``pos_embed``/``cls_token`` from its caller (how
    :func:`lth_kernels.nn.ticketize_vit` keeps a timm model's state dict unchanged).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768, *, cls_token=True,
                 pos_embed_has_cls: bool | None = None, bias: bool = True, norm: nn.Module | None = None,
                 checked: bool = True, own_embeddings: bool = True):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.norm = norm if norm is not None else nn.Identity()
        self.has_cls = bool(cls_token)
        self.pos_embed_has_cls = self.has_cls if pos_embed_has_cls is None else pos_embed_has_cls
        n_pos = self.num_patches + (1 if self.pos_embed_has_cls else 0)
        self.own_embeddings = own_embeddings
        if own_embeddings:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
            self.pos_embed = nn.Parameter(torch.randn(1, n_pos, embed_dim) * 0.02)
        self.checked = checked

    @classmethod
    def from_timm(cls, patch_embed: nn.Module, pos_embed: torch.Tensor | None, cls_token: torch.Tensor | None = None,
                  *, no_embed_class: bool = False) -> TicketPatchEmbed:
        """Copies weights from a timm ``PatchEmbed`` plus the model's ``pos_embed`` / ``cls_token``."""
        proj = patch_embed.proj
        if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride or proj.padding not in ((0, 0), 0):
            raise ValueError(f"patch_embed: expected a Conv2d projection with kernel == stride, got {proj}")
        if pos_embed is None:
            raise ValueError("pos_embed: None is not supported (kept patches need their position embedding)")
        has_cls = cls_token is not None and not no_embed_class
        grid = tuple(patch_embed.grid_size)
        n_pos = grid[0] * grid[1] + (1 if has_cls else 0)
        if pos_embed.shape[1] != n_pos:
            raise ValueError(f"pos_embed: expected {n_pos} positions for grid {grid} (cls in pos_embed: {has_cls}), "
                             f"got shape {tuple(pos_embed.shape)}")
        img = (grid[0] * proj.stride[0], grid[1] * proj.stride[1])
        norm = patch_embed.norm if not isinstance(patch_embed.norm, nn.Identity) else None
        mod = cls(img, proj.kernel_size, proj.in_channels, proj.out_channels, cls_token=cls_token is not None,
                  pos_embed_has_cls=has_cls, bias=proj.bias is not None, norm=norm)
        mod = mod.to(device=proj.weight.device, dtype=proj.weight.dtype)
        with torch.no_grad():
            mod.proj.load_state_dict(proj.state_dict())
            mod.pos_embed.copy_(pos_embed)
            if cls_token is not None:
                mod.cls_token.copy_(cls_token)
        return mod

    def kept_patches(self, images: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        """(B, K, C*ph*pw) pixels of the kept patches, in the Conv2d weight's (C, ph, pw) order."""
        b, c, h, w = images.shape
        (ph, pw), (gh, gw) = self.patch_size, self.grid_size
        grid = images.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # a view: (B, gh, gw, C, ph, pw)
        idx = keep_index.long()
        rows = torch.arange(b, device=images.device)[:, None]
        return grid[rows, idx // gw, idx % gw].reshape(b, idx.shape[1], c * ph * pw)

    def forward(self, images: torch.Tensor, keep_index: torch.Tensor | None = None, *,
                pos_embed: torch.Tensor | None = None, cls_token: torch.Tensor | None = None) -> torch.Tensor:
        if self.own_embeddings:
            pos_embed, cls_token = self.pos_embed, self.cls_token
        elif pos_embed is None or (self.has_cls and cls_token is None):
            raise ValueError("pos_embed: this TicketPatchEmbed does not own its embeddings; pass pos_embed= and "
                             "cls_token=")
        if images.dim() != 4 or images.shape[1] != self.in_chans or tuple(images.shape[2:]) != self.img_size:
            raise ValueError(f"images: expected (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}), got "
                             f"{tuple(images.shape)}")
        b = images.shape[0]
        if keep_index is None:
            keep_index = torch.arange(self.num_patches, device=images.device).expand(b, -1)
        elif (not isinstance(keep_index, torch.Tensor) or keep_index.dim() != 2 or keep_index.shape[0] != b
              or keep_index.dtype not in (torch.int32, torch.int64)):
            got = (f"{keep_index.dtype} {tuple(keep_index.shape)}" if isinstance(keep_index, torch.Tensor)
                   else type(keep_index).__name__)
            raise ValueError(f"keep_index: expected an int32/int64 tensor of shape (B={b}, K), got {got}")
        elif self.checked and not torch.compiler.is_compiling():
            check_index(keep_index, self.num_patches, "keep_index")
        patches = self.kept_patches(images, keep_index)
        x = nn.functional.linear(patches, self.proj.weight.reshape(self.embed_dim, -1), self.proj.bias)
        x = self.norm(x)
        first = 1 if self.pos_embed_has_cls else 0
        x = x + pos_embed[0, first:][keep_index.long()]  # each kept patch keeps its own position
        if self.has_cls:
            cls = cls_token + (pos_embed[:, :1] if self.pos_embed_has_cls else 0)
            x = torch.cat([cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x
