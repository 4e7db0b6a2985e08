"""Scored layers for mask search on frozen weights (edge-popup, lottery jackpots).

``ScoredLinear`` / ``ScoredConv2d`` keep the layer's ``weight`` (and ``bias``) as they are, add a float
``scores`` parameter of the weight's shape and a persistent bool buffer ``b_mask``. The forward computes the
layer with the weight masked by ``b_mask``; the backward gives ``scores`` the straight-through gradient
``(dYᵀ·X) ⊙ W`` over *all* entries, pruned ones included (``ops.masked_linear_scores``). Which entries
``b_mask`` keeps is the caller's rule (top-k, restricted swaps, ...): the layers never change it themselves.
With the weights frozen, the score gradient is one library GEMM (it covers every entry: no tile to skip);
code that also trains the weight gets dW and the scores from one pass (the fused Triton kernel, or one GEMM).

The buffer is deliberately not called ``mask``: the trainer's mask guard zeroes a masked layer's weight at
pruned positions, and a search must leave the pre-trained weights bit-identical.

``score_layers(model, masks)`` swaps the named ``nn.Linear`` / ``nn.Conv2d`` layers in place (weights shared,
not copied) and freezes every other parameter; ``unscore_layers(model)`` swaps them back and returns the masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.ops.masked_matmul import masked_linear_scores

KEPT_SCORE, PRUNED_SCORE = 1.0, 0.99  # lottery jackpots' magnitude initialisation (TPAMI code)
SCORE_INITS = ("magnitude", "kaiming")


class _Scored:
    """Shared part of the scored layers (a mixin over the torch layer class)."""

    scores: nn.Parameter
    b_mask: torch.Tensor

    def _init_scores(self, mask: torch.Tensor, kept_score: float, pruned_score: float, score_init: str = "magnitude",
                     generator: torch.Generator | None = None) -> None:
        mask = _check_mask(mask, self.weight)
        w = self.weight
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        if score_init == "magnitude":
            init = torch.where(mask.to(w.device), kept_score, pruned_score).to(device=w.device, dtype=torch.float32)
        else:  # edge-popup (Ramanujan et al.): kaiming_uniform_(scores, a=sqrt(5)); the mask is its top-k |s|
            init = torch.empty(w.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
            init = init.to(w.device)
            top = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            top[init.abs().flatten().topk(int(mask.sum())).indices] = True
            mask = top.view(w.shape)
        self.scores = nn.Parameter(init)
        self.register_buffer("b_mask", mask.to(w.device).contiguous(), persistent=True)
        self.kept = int(mask.sum())

    @torch.no_grad()
    def set_b_mask(self, mask: torch.Tensor) -> None:
        """Replace the binary mask in place (same kept count is the caller's business)."""
        self.b_mask.copy_(_check_mask(mask, self.weight))
        self.kept = int(self.b_mask.sum())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept={self.kept}/{self.weight.numel()}"


def _check_mask(mask, weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a tensor of the weight's shape {tuple(weight.shape)}, got {shape}")
    return mask.detach().to(weight.device) != 0


class ScoredLinear(_Scored, nn.Linear):
    """``nn.Linear`` whose weight is masked by ``b_mask``; ``scores`` get the straight-through gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_linear_scores(x, self.weight, self.b_mask, self.scores, self.bias)


class ScoredConv2d(_Scored, nn.Conv2d):
    """``nn.Conv2d`` (groups 1, zero padding) with ``b_mask`` and ``scores`` as in :class:`ScoredLinear`.

    The forward is one ``F.conv2d`` with the weight ``W * (b_mask + s - stop_grad(s))``: its value is
    ``W * b_mask``, and autograd gives the scores ``dL/dW' * W`` (the weight-gradient convolution times W,
    over all entries) without unfolding the input, whose patches would take ``k*k`` times the activation
    memory (tens of GB on ResNet-50). ``forward_unfold`` is the earlier unfold + matmul path through
    ``ops.masked_linear_scores``, kept as the check of this one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scores
        w = self.weight * (self.b_mask.to(self.weight.dtype) + (s - s.detach()).to(self.weight.dtype))
        return self._conv_forward(x, w, self.bias)

    def forward_unfold(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        pad = self._reversed_padding_repeated_twice if isinstance(self.padding, str) else None
        if pad is not None and any(pad):  # 'same' padding: pad explicitly, then run unpadded
            x = F.pad(x, pad)
        padding = (0, 0) if isinstance(self.padding, str) else self.padding
        o, kh, kw = self.out_channels, *self.kernel_size
        w2 = self.weight.reshape(o, -1)
        m2, s2 = self.b_mask.reshape(o, -1), self.scores.reshape(o, -1)
        if (kh, kw) == (1, 1) and padding == (0, 0) and self.dilation == (1, 1):
            xs = x[:, :, :: self.stride[0], :: self.stride[1]]
            y = masked_linear_scores(xs.permute(0, 2, 3, 1), w2, m2, s2, self.bias)  # (B, Ho, Wo, O)
            y = y.permute(0, 3, 1, 2)
        else:
            ho, wo = (_out(x.shape[2 + i], self.kernel_size[i], self.stride[i], padding[i], self.dilation[i])
                      for i in range(2))
            cols = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)  # (B, C*kh*kw, L)
            y = masked_linear_scores(cols.transpose(1, 2), w2, m2, s2, self.bias)  # (B, L, O)
            y = y.transpose(1, 2).reshape(x.shape[0], o, ho, wo)
        y = y.contiguous()
        return y.squeeze(0) if unbatched else y


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


_SCORED = {nn.Linear: ScoredLinear, nn.Conv2d: ScoredConv2d}


def _module_name(weight_name: str) -> str:
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name


def score_layers(model: nn.Module, masks: Mapping[str, torch.Tensor], *, kept_score: float = KEPT_SCORE,
                 pruned_score: float = PRUNED_SCORE, score_init: str = "magnitude",
                 generator: torch.Generator | None = None) -> dict[str, nn.Module]:
    """Turn the layers named in ``masks`` (weight names, e.g. ``"fc1.weight"``) into scored layers in place.

    ``score_init="magnitude"`` (lottery jackpots): scores start at ``kept_score`` where the mask keeps a weight
    and ``pruned_score`` elsewhere; ``b_mask`` starts as the mask. ``"kaiming"`` (edge-popup): Kaiming-uniform
    scores (``a = sqrt(5)``, drawn from ``generator``) and ``b_mask`` their top-k ``|s|`` per layer, with k the
    mask's kept count (so the per-layer rates stay those of ``masks``). Every parameter of the model is frozen
    (``requires_grad=False``) except the new scores; BN running statistics still update in train mode.
    Returns ``{weight name: scored layer}``.
    """
    if score_init not in SCORE_INITS:
        raise ValueError(f"score_init: expected one of {', '.join(SCORE_INITS)}, got {score_init!r}")
    modules = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        mod_name = _module_name(name)
        module = modules.get(mod_name)
        if type(module) not in _SCORED:
            what = "no module" if module is None else f"a {type(module).__name__}"
            raise ValueError(f"masks: {name!r} is {what}, expected the weight of an nn.Linear or nn.Conv2d")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise ValueError(f"masks: {name!r} is a grouped or non-zero-padded conv (groups={module.groups}, "
                             f"padding_mode={module.padding_mode!r}); exclude it from the search")
        module.__class__ = _SCORED[type(module)]
        module._init_scores(mask, kept_score, pruned_score, score_init, generator)
        out[name] = module
    scores = {id(m.scores) for m in out.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in scores)
    return out


def scored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: layer}`` of every scored layer of ``model``, in model order."""
    return {f"{n}.weight" if n else "weight": m for n, m in model.named_modules() if isinstance(m, _Scored)}


def unscore_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Swap every scored layer back to its torch class (weights untouched, scores dropped); returns the masks
    ``{weight name: bool mask on CPU}``."""
    masks = {}
    for name, m in scored_layers(model).items():
        masks[name] = m.b_mask.detach().to("cpu", copy=True)
        del m.scores
        del m._buffers["b_mask"]
        del m.kept
        m.__class__ = nn.Linear if isinstance(m, nn.Linear) else nn.Conv2d
    return masks


__all__ = ["KEPT_SCORE", "PRUNED_SCORE", "SCORE_INITS", "ScoredConv2d", "ScoredLinear", "score_layers", "scored_layers",
           "unscore_layers"]
