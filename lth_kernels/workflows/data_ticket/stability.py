"""Ticket stability: is a data-level ticket a property of the image, or of one view of it and one selector?

Per image of the evaluation split, the Jaccard overlap |A ∩ B| / |A ∪ B| of the selector's K patch indices

* across augmentations: the un-augmented image against ``views`` augmented views, each a horizontal flip
  (every other view; the flipped view's ticket is mapped back to the original patch positions, so the same
  index means the same image region) plus Gaussian pixel noise of ``noise`` standard deviations (the images
  are normalised); crops are left out because a shift that is not a whole patch has no patch-exact inverse;
* across selector checkpoints: every earlier checkpoint of the selector's fine-tune (step 0 = the trained ViT
  before fine-tuning with token dropping, and the steps saved on the way) against the final selector.

1.0: the same K patches every time; about K / (2N - K) is what two independent random draws give.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Jaccard overlap of two ``(B, K)`` index tensors (distinct indices per row): ``(B,)`` float."""
    if a.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a, b: expected (B, K) index tensors of one B, got {tuple(a.shape)} and {tuple(b.shape)}")
    inter = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).sum(dim=1)
    return inter.double() / (a.shape[1] + b.shape[1] - inter).double()


def unflip(index: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch indices of a horizontally flipped image -> the same patches' indices in the original (row-major)."""
    gw = grid[1]
    return ((index // gw) * gw + (gw - 1 - index % gw)).sort(dim=1).values


def augmentation_stability(select: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                           grid: tuple[int, int], views: int = 4, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Per image: the mean Jaccard of the un-augmented image's ticket and each view's (see the module doc)."""
    if views < 1:
        raise ValueError(f"views: expected >= 1, got {views}")
    g = torch.Generator().manual_seed(seed)
    base = select(images)
    scores = []
    for v in range(views):
        flip = v % 2 == 1
        x = images.flip(-1) if flip else images
        x = x + noise * torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        t = select(x)
        scores.append(jaccard(base, unflip(t, grid) if flip else t))
    return torch.stack(scores).mean(dim=0)


def checkpoint_stability(selects: dict[int, Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor
                         ) -> dict[int, torch.Tensor]:
    """``{step: per-image Jaccard of that checkpoint's ticket and the last step's}`` for every earlier step."""
    steps = sorted(selects)
    final = selects[steps[-1]](images)
    return {s: jaccard(selects[s](images), final) for s in steps[:-1]}


def stability_record(aug: torch.Tensor, ckpt: dict[int, torch.Tensor], num_kept: int, num_patches: int) -> dict:
    """The JSON record of one keep rate: per-image values and their means, with the random-draw reference."""
    mean = lambda t: float(t.mean()) if t.numel() else None
    return {"num_images": int(aug.numel()), "num_kept": num_kept, "num_patches": num_patches,
            "random_expectation": num_kept / (2 * num_patches - num_kept),
            "augmentation": {"mean": mean(aug), "per_image": aug.tolist()},
            "checkpoints": {str(s): {"mean": mean(v), "per_image": v.tolist()} for s, v in ckpt.items()}}
