"""Students of data-level tickets: where each batch's kept patches come from, and how a student sees them.

The Trainer calls ``model(images)``; a ``TicketStudent`` wraps the student network and asks an *index
source* for the (B, K) kept patches of each batch it is given, so selection runs on exactly the images the
student sees (per image and per augmented view), without any change to the Trainer. Sources:

* ``AllPatches``: every patch (path c);
* ``SelectorPatches``: the frozen selector's ticket, computed in inference mode (path a, sparse evaluation);
* ``RandomPatches``: K uniform patches per image drawn without replacement, redrawn every call (path b);
  the draw is a pure function of (seed, step, call) so that runs are seeded and resume bit-exactly
  (``StepClock`` tells the sources the step);
* ``FixedRandomPatches``: one random set per batch slot, drawn once and reused every iteration.

The sources are plain objects, not modules: the selector's weights never enter the student's state dict or
its optimizer. How the student consumes the indices (``input_mode``):

* ``tokens``: a timm ViT made ``ticketize_vit`` runs on the K kept patch tokens + CLS (each kept patch
  with its own position embedding);
* ``zero``: any image model (Swin, ResNet) on the full image with the dropped patches' pixels set to 0;
* ``compact``: any image model on the kept patches re-tiled, in position order, into a compact
  ``s x s``-patch image (``s = ceil(sqrt(K))``; the free tail slots are zero).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lth_kernels.training.data_order import epoch_seed
from lth_kernels.training.trainer import Callback

INPUT_MODES = ("tokens", "zero", "compact")


def random_indices(batch: int, num_patches: int, k: int, generator: torch.Generator | None = None,
                   device=None) -> torch.Tensor:
    """(batch, k) int64 patch positions, uniform without replacement per row, sorted ascending."""
    scores = torch.rand(batch, num_patches, generator=generator)
    return scores.argsort(dim=1)[:, :k].sort(dim=1).values.to(device)


class AllPatches:
    """Every patch: the student runs dense."""

    name = "all"

    def __call__(self, images: torch.Tensor) -> None:
        return None


class SelectorPatches:
    """The selector's ticket for each image of the batch (inference mode; the selector is frozen)."""

    name = "ticket"

    def __init__(self, selector):
        self.selector = selector.requires_grad_(False).eval()
        self.num_patches, self.num_kept = selector.num_patches, selector.num_kept

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        p = next(self.selector.parameters())
        if p.device != images.device:
            self.selector.to(images.device)
        return self.selector.select(images)


class RandomPatches:
    """K random patches per image, redrawn every call; call c of step s draws from seed (seed, s, c)."""

    name = "random"

    def __init__(self, num_patches: int, num_kept: int, seed: int):
        if not 1 <= num_kept <= num_patches:
            raise ValueError(f"num_kept: expected 1..{num_patches}, got {num_kept}")
        self.num_patches, self.num_kept, self.seed = num_patches, num_kept, seed
        self.set_step(0)

    def set_step(self, step: int) -> None:
        self.step, self.calls = int(step), 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.step * 1_000_003 + self.calls))
        self.calls += 1
        return random_indices(images.shape[0], self.num_patches, self.num_kept, g, images.device)


class FixedRandomPatches:
    """One random K-subset per batch slot (row i of every batch), drawn once from (seed, i) and reused."""

    name = "random_fixed"

    def __init__(self, num_patches: int, num_kept: int, seed: int):
        if not 1 <= num_kept <= num_patches:
            raise ValueError(f"num_kept: expected 1..{num_patches}, got {num_kept}")
        self.num_patches, self.num_kept, self.seed = num_patches, num_kept, seed
        self.table = torch.empty(0, num_kept, dtype=torch.long)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        rows = [self.table]
        for i in range(self.table.shape[0], b):
            g = torch.Generator().manual_seed(epoch_seed(self.seed, i))
            rows.append(random_indices(1, self.num_patches, self.num_kept, g))
        self.table = torch.cat(rows)
        return self.table[:b].to(images.device)


def patch_grid(images: torch.Tensor, patch: tuple[int, int]) -> tuple[int, int]:
    h, w = images.shape[-2:]
    if h % patch[0] or w % patch[1]:
        raise ValueError(f"images: size {h}x{w} is not a multiple of the selector's patch {patch[0]}x{patch[1]}")
    return h // patch[0], w // patch[1]


def zero_fill(images: torch.Tensor, index: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``images`` with the pixels of every patch not in ``index`` (B, K) set to zero (the reference's
    ``go_back_original_input_with_zero``)."""
    gh, gw = patch_grid(images, patch)
    keep = torch.zeros(images.shape[0], gh * gw, dtype=images.dtype, device=images.device)
    keep.scatter_(1, index.long(), 1.0)
    keep = keep.view(-1, 1, gh, gw).repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)
    return images * keep


def compact_side(num_kept: int) -> int:
    """Patches per side of the compact re-tiled image of ``num_kept`` patches."""
    return math.ceil(math.sqrt(num_kept) - 1e-9)


def compact_tile(images: torch.Tensor, index: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """The kept patches of each image, sorted by position, re-tiled row-major into an ``s x s``-patch image
    (B, C, s * ph, s * pw), ``s = compact_side(K)``; slots after the K-th are zero (the reference's
    ``--small-dense-input``)."""
    b, c = images.shape[:2]
    gh, gw = patch_grid(images, patch)
    ph, pw = patch
    k = index.shape[1]
    s = compact_side(k)
    patches = images.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, ph, pw)
    order = index.long().sort(dim=1).values
    kept = patches.gather(1, order.view(b, k, 1, 1, 1).expand(-1, -1, c, ph, pw))
    if s * s > k:
        kept = torch.cat([kept, kept.new_zeros(b, s * s - k, c, ph, pw)], dim=1)
    return kept.reshape(b, s, s, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, s * ph, s * pw)


class TicketStudent(nn.Module):
    """``student`` fed the patches chosen by ``train_source`` (training mode) or ``eval_source`` (eval mode).

    ``input_mode`` is one of ``INPUT_MODES``; ``patch`` is the selector's patch size (pixels), used by the
    ``zero`` and ``compact`` modes. ``state_dict()`` is the student's under the ``student.`` prefix.
    """

    def __init__(self, student: nn.Module, train_source, eval_source=None, *, input_mode: str = "tokens",
                 patch: tuple[int, int] | None = None):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode: expected one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
        if input_mode != "tokens" and patch is None:
            raise ValueError(f"patch: input_mode {input_mode!r} needs the selector's patch size, got None")
        self.student, self.input_mode, self.patch = student, input_mode, patch
        self.train_source = train_source
        self.eval_source = eval_source if eval_source is not None else AllPatches()

    @property
    def source(self):
        return self.train_source if self.training else self.eval_source

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index = self.source(images)
        if index is None:
            return self.student(images)
        if self.input_mode == "tokens":
            return self.student(images, index)
        if self.input_mode == "zero":
            return self.student(zero_fill(images, index, self.patch))
        return self.student(compact_tile(images, index, self.patch))


class StepClock(Callback):
    """Tells step-seeded index sources (``set_step``) which training step is about to run."""

    def __init__(self, *sources):
        self.sources = [s for s in sources if hasattr(s, "set_step")]

    def on_step_start(self, trainer, step: int) -> None:
        for s in self.sources:
            s.set_step(step)
