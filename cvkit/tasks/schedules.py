"""Learning-rate schedules of the ECA-Net, iSQRT-COV, GCP and hyper-connections recipes.

All are multiplicative factors on the base LR as a function of the (1-based, as in the papers)
epoch ``e``; ``per_iteration`` makes ``e`` fractional (stepped every optimizer step) instead of
constant through an epoch. A linear warmup (epochs or steps) multiplies any of them.

- ``step``:        gamma ** floor((e-1) / step_size)            ECA-Net ResNets: x0.1 every 30
- ``multistep``:   gamma ** #{m in milestones : e-1 >= m}       iSQRT-COV: x0.1 at 30, 45, 60
- ``exponential``: gamma ** (e-1)                               MobileNetV2: x0.98 / epoch; GCP x0.92
- ``poly``:        (1 - (e-1)/horizon) ** power                 GCP LRfast (52, 11), LRadju (49, 2)
- ``cosine``:      min + (1-min)(1 + cos(pi (e-1)/total)) / 2   ViT + hyper-connections
- ``piecewise_linear``: straight lines through ``points`` [[e, factor], ...], the first factor
                   before the first point, the last after it     GCP MobileNetV2 LRadju
- ``constant``:    1
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

ScheduleName = Literal["step", "multistep", "exponential", "poly", "cosine",
                       "piecewise_linear", "constant"]


@dataclass
class LRSchedule:
    """One paper schedule. ``horizon``/``total_epochs`` default to the run's max_epochs."""

    name: ScheduleName = "step"
    step_size: int = 30
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    power: float = 1.0
    horizon: Optional[float] = None
    min_factor: float = 0.0
    points: list[list[float]] = field(default_factory=list)
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    per_iteration: bool = False

    def __post_init__(self) -> None:
        if self.name not in ScheduleName.__args__:
            raise ValueError(f"unknown LR schedule {self.name!r}; choose one of "
                             f"{', '.join(ScheduleName.__args__)}")
        if self.name == "piecewise_linear":
            self._check_points()

    def _check_points(self) -> None:
        pts = self.points
        ok = (isinstance(pts, (list, tuple)) and len(pts) >= 1
              and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pts))
        if ok:
            try:
                pts = [(float(e), float(f)) for e, f in pts]
            except (TypeError, ValueError):
                ok = False
        if not ok or not all(math.isfinite(v) for p in pts for v in p) \
                or any(b[0] <= a[0] for a, b in zip(pts, pts[1:])) or any(f < 0 for _, f in pts):
            raise ValueError(f"schedule 'piecewise_linear': points must be [[epoch, factor], ...] "
                             f"with increasing finite epochs and finite factors >= 0, "
                             f"got {self.points!r}")
        self.points = [list(p) for p in pts]

    def factor(self, epoch: float, total_epochs: Optional[float] = None) -> float:
        """LR factor at 1-based ``epoch`` (fractional when stepping per iteration), no warmup."""
        e0 = epoch - 1.0  # epochs completed
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** math.floor(e0 / self.step_size)
        if self.name == "multistep":
            return self.gamma ** sum(e0 >= m for m in self.milestones)
        if self.name == "exponential":
            return self.gamma ** e0
        if self.name == "piecewise_linear":
            return self._interpolate(epoch)
        total = self.horizon if self.horizon is not None else total_epochs
        if total is None:
            raise ValueError(f"schedule {self.name!r} needs horizon or the run's max_epochs")
        if self.name == "poly":
            return max(0.0, 1.0 - e0 / total) ** self.power
        if self.name == "cosine":
            t = min(1.0, e0 / total)
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        raise ValueError(f"unknown LR schedule {self.name!r}; choose one of {ScheduleName.__args__}")

    def _interpolate(self, epoch: float) -> float:
        (e_first, f_first), (e_last, f_last) = self.points[0], self.points[-1]
        if epoch <= e_first:
            return f_first
        for (e_a, f_a), (e_b, f_b) in zip(self.points, self.points[1:]):
            if epoch <= e_b:
                return f_a + (f_b - f_a) * (epoch - e_a) / (e_b - e_a)
        return f_last

    def factor_at_step(self, step: int, steps_per_epoch: int,
                       total_epochs: Optional[float] = None) -> float:
        """Factor after ``step`` optimizer steps (0-based), warmup included."""
        epochs_done = step / steps_per_epoch
        if not self.per_iteration:
            epochs_done = math.floor(epochs_done)
        f = self.factor(epochs_done + 1.0, total_epochs)
        warm = self.warmup_steps or self.warmup_epochs * steps_per_epoch
        if warm > 0 and step < warm:
            s = self.warmup_start_factor
            f *= s + (1 - s) * (step + 1) / warm
        return f

    def lambda_lr(self, steps_per_epoch: int, total_epochs: Optional[float] = None):
        """The function of the step count for ``torch.optim.lr_scheduler.LambdaLR``."""
        if self.name not in ScheduleName.__args__:
            raise ValueError(f"unknown LR schedule {self.name!r}; choose one of {ScheduleName.__args__}")
        return lambda step: self.factor_at_step(step, steps_per_epoch, total_epochs)
