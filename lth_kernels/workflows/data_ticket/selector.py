"""The ticket selector of data-level lottery tickets: an EViT-style ViT that drops inattentive patch tokens.

At each drop block (0-based; default 3, 6, 9 of 12, scaled to other depths by ``default_drop_blocks``)
``k = ceil(r * N_cur)`` of the ``N_cur`` surviving patch tokens are kept: those with the largest attention
from the CLS query, averaged over heads, ``a_j = mean_h softmax(q_cls . k_j / sqrt(d))_h`` (taken over the
non-CLS keys of the row, after the softmax over all keys). As in the reference (Shen et al., EViT's
``Block``), the gather happens after the attention residual and before the MLP of that block, and each
stage's indices are relative to the previous stage's survivors; ``compose_stage_indices`` maps them back to
patch positions. The final ticket of an image is its ``K = ceil(r ceil(r ceil(r N)))`` patch positions.

``PatchSelector(vit, keep_rate)`` wraps a timm ``VisionTransformer`` (the modules are shared, so its state
dict is the ViT's): ``forward(images)`` returns the logits with dropping active (for fine-tuning the
selector), ``select(images)`` returns the (B, K) ticket in inference mode. ``set_training_keep_rate(r_s)``
makes training forwards keep ``ceil(r_s * N_cur)`` per stage instead (the keep-rate schedule of the
fine-tune, ``KeepRateClock``); evaluation and ``select`` always use the selector's own ``keep_rate``.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lth_kernels.ops.token_gather import gather_tokens
from lth_kernels.training.callbacks import Callback
from lth_kernels.workflows.data_ticket.sizes import (
    check_keep_rate,
    default_drop_blocks,
    parse_drop_blocks,
    scheduled_keep_rate,
    stage_counts,
)


def compose_stage_indices(stages: list[torch.Tensor], num_patches: int | None = None) -> torch.Tensor:
    """Patch positions (B, K_last) of the tokens surviving every stage; stage i's (B, k_i) indices point into
    the k_{i-1} survivors of stage i-1 (stage 0 into the patch grid)."""
    if not stages:
        raise ValueError("stages: expected at least one index tensor")
    out = stages[0].long()
    for idx in stages[1:]:
        out = out.gather(1, idx.long())
    if num_patches is not None and out.numel() and int(out.max()) >= num_patches:
        raise ValueError(f"stages: composed index {int(out.max())} is outside the {num_patches} patches")
    return out


def cls_attention_topk(attn: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From attention probabilities (B, H, 1 + N, 1 + N) with CLS at 0: the CLS row over the N patch keys,
    averaged over heads (B, N), and the indices of its top ``k`` (B, k), largest first."""
    score = attn[:, :, 0, 1:].mean(dim=1)
    return score, score.topk(k, dim=1, largest=True, sorted=True).indices


def _attention_with_probs(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` (or ``SparseAttention``) forward with explicit probabilities (SDPA hides them)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    o = attn.attn_drop(probs) @ v
    dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
    o = getattr(attn, "norm", nn.Identity())(o.transpose(1, 2).reshape(b, n, dim))
    return attn.proj_drop(attn.proj(o)), probs


class PatchSelector(nn.Module):
    """EViT-style ticket selector over a timm ``VisionTransformer`` (CLS token, no register tokens).

    Args:
        vit: the (trained) ViT; its modules are used in place (``selector.state_dict()`` == the ViT's with a
            ``vit.`` prefix).
        keep_rate: r in (0, 1]; every stage keeps ``ceil(r * N_cur)`` patch tokens.
        drop_blocks: 0-based block indices where tokens are dropped (None: ``default_drop_blocks(depth)``).
    """

    def __init__(self, vit: nn.Module, keep_rate: float, drop_blocks: tuple[int, ...] | None = None):
        super().__init__()
        needed = ("patch_embed", "blocks", "cls_token", "_pos_embed", "norm", "forward_head")
        missing = [n for n in needed if not hasattr(vit, n)]
        if missing or vit.cls_token is None:
            raise ValueError(f"vit: the selector needs a timm VisionTransformer with a CLS token, "
                             f"{type(vit).__name__} lacks {missing or ['cls_token']}")
        if getattr(vit, "num_prefix_tokens", 1) != 1:
            raise ValueError(f"vit: register tokens are not supported (num_prefix_tokens={vit.num_prefix_tokens})")
        self.vit = vit
        self.keep_rate = check_keep_rate(keep_rate)
        depth = len(vit.blocks)
        self.drop_blocks = tuple(drop_blocks) if drop_blocks is not None else default_drop_blocks(depth)
        parse_drop_blocks(",".join(map(str, self.drop_blocks)), depth)
        self.grid = tuple(vit.patch_embed.grid_size)
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.counts = stage_counts(self.num_patches, self.keep_rate, len(self.drop_blocks))
        self.num_kept = self.counts[-1]
        self.training_counts = self.counts

    def set_training_keep_rate(self, keep_rate: float) -> None:
        """Keep ``ceil(keep_rate * N_cur)`` tokens per stage in training forwards (eval and ``select``: unchanged)."""
        self.training_counts = stage_counts(self.num_patches, keep_rate, len(self.drop_blocks))

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final normalised tokens (B, 1 + K, D) and the per-stage relative keep indices."""
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        stages, drop = [], dict(zip(self.drop_blocks, self.training_counts if self.training else self.counts))
        for i, blk in enumerate(vit.blocks):
            if i not in drop:
                x = blk(x)
                continue
            out, probs = _attention_with_probs(blk.attn, blk.norm1(x))
            x = x + blk.drop_path1(blk.ls1(out))
            _, idx = cls_attention_topk(probs, drop[i])
            stages.append(idx)
            # topk indices are unique by construction: skip the host-syncing check
            x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], idx, checked=False)], dim=1)
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return vit.norm(x), stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits with token dropping active (what the selector is fine-tuned with)."""
        x, _ = self.features(images)
        return self.vit.forward_head(x)

    def select(self, images: torch.Tensor) -> torch.Tensor:
        """The ticket (B, K) int64: kept patch positions (row-major over the grid), sorted ascending.

        Runs in eval mode (no dropout / drop-path) under inference mode, and restores the training flag."""
        was = self.training
        self.eval()
        try:
            with torch.inference_mode():
                _, stages = self.features(images)
                idx = compose_stage_indices(stages).sort(dim=1).values
        finally:
            self.train(was)
        return idx.clone()  # outside inference mode: a normal tensor that autograd-tracked code may index with

    def identity(self) -> dict[str, str]:
        """String metadata naming this selector: model, keep rate, drop blocks, grid and a weight digest."""
        h = hashlib.sha256()
        for name, t in sorted(self.vit.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return {"selector_model": str(getattr(self.vit, "model_name", type(self.vit).__name__)),
                "keep_rate": repr(self.keep_rate), "drop_blocks": ",".join(map(str, self.drop_blocks)),
                "stage_counts": ",".join(map(str, self.counts)), "num_patches": str(self.num_patches),
                "grid": f"{self.grid[0]}x{self.grid[1]}", "patch_size": f"{self.patch_size[0]}x{self.patch_size[1]}",
                "selector_sha256": h.hexdigest()[:16]}


class KeepRateClock(Callback):
    """Sets the selector's training keep rate before every fine-tune step: ``scheduled_keep_rate`` of the step."""

    def __init__(self, selector: PatchSelector, start_epoch: int, epochs: int):
        self.selector, self.start_epoch, self.epochs = selector, start_epoch, epochs

    def on_step_start(self, trainer, step: int) -> None:
        self.selector.set_training_keep_rate(scheduled_keep_rate(step, trainer.steps_per_epoch,
                                                                 self.selector.keep_rate, self.start_epoch,
                                                                 self.epochs))
