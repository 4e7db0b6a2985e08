"""Small helpers shared by the model definitions."""

from __future__ import annotations


def too_small(name: str, img_size: tuple[int, int], minimum: int, why: str) -> ValueError:
    """The one-line error for an input a model's downsampling cannot take."""
    return ValueError(f"img_size: {name} needs inputs of at least {minimum}x{minimum} ({why}), "
                      f"got {img_size[0]}x{img_size[1]}")
