"""Step strings: training lengths and schedule points counted in epochs and/or iterations.

"160ep", "2000it" and "2ep500it" all name an optimizer step; they resolve to an absolute iteration once the
number of steps per epoch is known (open_lth's ``Step``). Torch-free, so hparams validation stays instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP_RE = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*it)?\s*$")
_EXPECTED = "expected e.g. '160ep', '2000it' or '2ep500it'"


class StepError(ValueError):
    """A step string that does not parse; the message is one line and names the flag."""


@dataclass(frozen=True, order=True)
class Step:
    """An absolute optimizer step; ``epoch`` and ``it`` are its position in epochs of ``steps_per_epoch``."""

    iteration: int
    steps_per_epoch: int

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise StepError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.iteration < 0:
            raise StepError(f"step must be >= 0, got {self.iteration}")

    @property
    def epoch(self) -> int:
        return self.iteration // self.steps_per_epoch

    @property
    def it(self) -> int:
        """Iteration inside the current epoch."""
        return self.iteration % self.steps_per_epoch

    def __str__(self) -> str:
        return f"{self.epoch}ep{self.it}it"


def split_step_string(text: str, flag: str = "step") -> tuple[int, int]:
    """``"2ep500it"`` -> ``(2, 500)``; validates without knowing the epoch length."""
    if not isinstance(text, str):
        raise StepError(f"{flag}: {_EXPECTED}, got {text!r}")
    m = _STEP_RE.match(text)
    if m is None or (m.group(1) is None and m.group(2) is None):
        raise StepError(f"{flag}: {_EXPECTED}, got {text!r}")
    return int(m.group(1) or 0), int(m.group(2) or 0)


def parse_steps(text: str | int | Step, steps_per_epoch: int, flag: str = "step") -> Step:
    """Resolve a step string (or an int count of iterations, or a ``Step``) to an absolute ``Step``."""
    if isinstance(text, Step):
        return Step(text.iteration, steps_per_epoch)
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise StepError(f"{flag}: must be >= 0, got {text}")
        return Step(text, steps_per_epoch)
    ep, it = split_step_string(text, flag)
    return Step(ep * steps_per_epoch + it, steps_per_epoch)


def split_step_list(text: str, flag: str = "steps") -> list[str]:
    """``"80ep,120ep"`` -> ``["80ep", "120ep"]`` (validated); the empty string is the empty list."""
    if not isinstance(text, str):
        raise StepError(f"{flag}: expected a comma-separated list such as '80ep,120ep', got {text!r}")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    for p in parts:
        split_step_string(p, flag)
    return parts


def parse_step_list(text: str, steps_per_epoch: int, flag: str = "steps") -> list[Step]:
    """``"80ep,120ep"`` -> sorted absolute steps."""
    return sorted(parse_steps(p, steps_per_epoch, flag) for p in split_step_list(text, flag))
