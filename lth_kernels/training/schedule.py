"""Learning-rate schedules as pure functions of the absolute step.

The learning rate of step ``s`` depends on ``s`` alone, so a run restarted or rewound at step K gets the
schedule of an uninterrupted run without any scheduler state. Semantics follow open_lth:

* multistep: ``lr * gamma ** (number of milestones <= s)`` (at the milestone step the decay is in effect);
* cosine: after warmup, ``min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``,
  reaching ``min_lr`` (default 0) at the end (timm's ``CosineLRScheduler`` with ``lr_min``, as DeiT's ``--min-lr``);
* warmup: multiplied by ``min(1, s / warmup_steps)`` (open_lth: step 0 runs at lr 0).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """``factor(step)`` multiplies the peak learning rate; ``lr(step)`` is the learning rate of that step."""

    base_lr: float
    total_steps: int
    kind: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        if self.kind not in ("multistep", "cosine"):
            raise ValueError(f"kind: expected 'multistep' or 'cosine', got {self.kind!r}")
        if self.min_lr and (self.kind != "cosine" or not 0 <= self.min_lr < self.base_lr):
            raise ValueError(f"min_lr: needs the cosine schedule and 0 <= min_lr < lr ({self.base_lr}), got "
                             f"{self.min_lr} ({self.kind})")
        object.__setattr__(self, "milestones", tuple(sorted(self.milestones)))

    def factor(self, step: int) -> float:
        f = 1.0
        if self.warmup_steps > 0:
            f = min(1.0, step / self.warmup_steps)
        if self.kind == "multistep":
            f *= self.gamma ** bisect.bisect_right(self.milestones, step)
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            floor = self.min_lr / self.base_lr
            f *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return f

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)
