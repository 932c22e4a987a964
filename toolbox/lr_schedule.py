"""Learning-rate schedules (``train.lr_schedule``), as a pure function of the generator step.

The loop sets every tracked optimizer's rate to its base rate times ``factor(step)`` before
each step.  Nothing is kept between steps, so a resumed run is on the same rate as an
uninterrupted one without a scheduler state in the checkpoint.  The base rate of a group is
the one it was built with (kept under ``initial_lr``, as torch's schedulers keep it); a
scheme that changes a rate on purpose (ADL's discriminator rate in its adversarial phase)
changes the base with ``Scheme.set_base_lr`` and the schedule still applies on top.

- ``constant``: factor 1 (the default).
- ``step``: ``factor ** (step // every)`` (ESRGAN's "halve every N iterations"; seed 002
  halves every epoch).
- ``multistep``: ``factor ** (milestones passed)`` (BasicSR's MultiStepLR).
- ``cosine``: from 1 down to ``min_factor`` over the run (or ``steps``).
- every type: ``warmup`` steps of linear rise from 0 first.
"""

from __future__ import annotations

import math

from toolbox.errors import RecipeError

TYPES = ("constant", "step", "multistep", "cosine")


class LearningRateSchedule:
    def __init__(self, spec: dict | None, total_steps: int, source: str = "recipe",
                 key: str = "train.lr_schedule"):
        spec = dict(spec or {"type": "constant"})
        self.type = spec.pop("type", "constant")
        if self.type not in TYPES:
            raise RecipeError(f"unknown schedule {self.type!r}: one of {', '.join(TYPES)}", source, key)
        allowed = {"constant": {"warmup"}, "step": {"every", "factor", "warmup"},
                   "multistep": {"milestones", "factor", "warmup"},
                   "cosine": {"min_factor", "steps", "warmup"}}[self.type]
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise RecipeError(f"'{self.type}' takes {', '.join(sorted(allowed))}; not {', '.join(unknown)}",
                              source, key)
        self.warmup = int(spec.get("warmup", 0))
        self.factor = float(spec.get("factor", 0.5))
        self.every = int(spec.get("every", 0))
        self.milestones = sorted(int(m) for m in spec.get("milestones", []))
        self.min_factor = float(spec.get("min_factor", 0.0))
        self.steps = int(spec.get("steps", total_steps))
        if self.type == "step" and self.every < 1:
            raise RecipeError("'step' needs every: N (steps between changes, N >= 1)", source, key)
        if self.type == "multistep" and not self.milestones:
            raise RecipeError("'multistep' needs milestones: [steps at which the rate changes]", source, key)
        if self.warmup < 0 or self.factor <= 0 or not 0 <= self.min_factor <= 1 or self.steps < 1:
            raise RecipeError("warmup >= 0, factor > 0, 0 <= min_factor <= 1 and steps >= 1", source, key)

    def factor_at(self, step: int) -> float:
        """The multiplier of the base rate for generator step ``step`` (1-based)."""
        done = step - 1  # steps already taken
        warm = min(1.0, step / self.warmup) if self.warmup else 1.0
        if self.type == "step":
            return warm * self.factor ** (done // self.every)
        if self.type == "multistep":
            return warm * self.factor ** sum(done >= m for m in self.milestones)
        if self.type == "cosine":
            progress = min(1.0, done / max(1, self.steps - 1))
            return warm * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm

    def apply(self, optimizers, step: int) -> None:
        if self.type == "constant" and not self.warmup:
            return  # no schedule: a scheme's own rate changes stand as they are
        factor = self.factor_at(step)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor
