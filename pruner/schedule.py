"""When to prune and when to stop: plain, validating, serialisable objects."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError

AUTO = 0  # round_to: SIMD-friendly multiples per layer (see Schedule)


class Schedule:
    """Progressive pruning: each step removes ``step`` of every layer's original width,
    until ``target`` of the prunable units are gone.

    ``round_to`` > 1 rounds the width every layer keeps at the end to the nearest
    multiple of it (layers no wider than it keep their plain target): SIMD kernels
    (XNNPACK in LiteRT) run channels in tiles of 8 (ARM NEON) or 16 (x86 AVX-512),
    so a width between two multiples costs as much as the next one up, and aligned
    widths turn removed MACs into time saved (bench/dag_bench.py measures both).
    ``round_to=0`` (AUTO, the default) picks per layer: 16 for 64 channels or more
    (aligned on both), 8 from 16, none below, and keeps the exact target where
    rounding would leave the layer unpruned; ``prune`` applies it where channels couple
    (depthwise layers, residual adds: a group of several layers), and keeps exact
    targets elsewhere. ``round_to=1`` removes exactly the target.
    """

    def __init__(self, target: float = 0.5, step: float = 0.05, round_to: int = 0) -> None:
        if not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
            raise ConfigError(f"target must be in the open range (0, 1), got {target!r}")
        if not isinstance(step, (int, float)) or not 0.0 < float(step) <= 1.0:
            raise ConfigError(f"step must be in the range (0, 1], got {step!r}")
        if not isinstance(round_to, int) or round_to < 0:
            raise ConfigError(
                f"round_to must be an integer >= 1, or 0 for automatic, got {round_to!r}"
            )
        self.target = float(target)
        self.step = float(step)
        self.round_to = round_to

    def layer_target(self, width: int) -> int:
        """Units to remove from a layer of ``width`` original units: never more than the
        target share, and the layer keeps at least one (``round_to``: see the class)."""
        remove = max(0, min(width - 1, math.floor(self.target * width + 1e-9)))
        r = self.round_to or auto_multiple(width)
        if r > 1 and width > r:
            keep = max(r, int(math.floor((width - remove) / r + 0.5)) * r)
            if keep < width or self.round_to != AUTO:  # AUTO never rounds a layer to unpruned
                remove = max(0, width - keep)
        return remove

    def layer_targets(self, widths: dict[str, int], budget: str = "uniform") -> dict[str, int]:
        """Units to remove from each layer. ``uniform``: the target share of every layer
        (layer_target). ``width``: the same total, each layer's share proportional to
        the square of its width (at most 0.9): wide layers are the redundant ones, and
        the narrow first layers of a CNN carry every later feature (see README,
        pruning quality)."""
        if budget == "uniform" or len(widths) < 2:
            return {name: self.layer_target(w) for name, w in widths.items()}
        if budget != "width":
            raise ConfigError(f"budget must be 'uniform' or 'width', got {budget!r}")
        total = math.floor(self.target * sum(widths.values()) + 1e-9)
        cap = {n: min(w - 1, math.floor(0.9 * w)) for n, w in widths.items()}
        lo, hi = 0.0, 1.0 / min(widths.values()) ** 2
        for _ in range(100):  # units_l = min(cap, c * w_l^3): bisect c to reach the total
            c = (lo + hi) / 2
            got = sum(min(cap[n], c * w**3) for n, w in widths.items())
            lo, hi = (c, hi) if got < total else (lo, c)
        share = {n: min(cap[n], hi * w**3) for n, w in widths.items()}
        out = {n: math.floor(v + 1e-9) for n, v in share.items()}
        for n in sorted(share, key=lambda n: out[n] - share[n]):  # largest remainders first
            if sum(out.values()) >= total:
                break
            if out[n] < cap[n]:
                out[n] += 1
        for n, w in widths.items():  # rounding as in layer_target
            r = self.round_to or auto_multiple(w)
            if r > 1 and w > r:
                keep = max(r, int(math.floor((w - out[n]) / r + 0.5)) * r)
                if keep < w or self.round_to != AUTO:
                    out[n] = max(0, w - keep)
        return out

    def layer_quota(self, width: int) -> int:
        """Units one step removes from a layer of ``width`` original units."""
        return max(1, math.ceil(self.step * width - 1e-9))

    @property
    def max_steps(self) -> int:
        return math.ceil(self.target / self.step - 1e-9) + 1

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"target": self.target, "step": self.step}
        if self.round_to != AUTO:
            config["round_to"] = self.round_to
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        return cls(**config)

    def __repr__(self) -> str:
        extra = f", round_to={self.round_to}" if self.round_to != AUTO else ""
        return f"Schedule(target={self.target}, step={self.step}{extra})"


def auto_multiple(width: int) -> int:
    """The channel multiple AUTO keeps for a layer of ``width`` channels."""
    return 16 if width >= 64 else 8 if width >= 16 else 1


def _retention(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{name} must be in the range (0, 1], got {value!r}")
    return float(value)


class StopCriteria:
    """Stop early when accuracy or robust accuracy retention (pruned / original) falls
    below a floor, or when ``budget(model)`` returns True (the device budget is met)."""

    def __init__(
        self,
        min_accuracy_retention: float | None = None,
        min_robust_retention: float | None = None,
        budget: Callable[[Any], bool] | None = None,
    ) -> None:
        self.min_accuracy_retention = _retention("min_accuracy_retention", min_accuracy_retention)
        self.min_robust_retention = _retention("min_robust_retention", min_robust_retention)
        if budget is not None and not callable(budget):
            raise ConfigError("budget must be a callable model -> bool")
        self.budget = budget

    @property
    def needs_eval(self) -> bool:
        return self.min_accuracy_retention is not None or self.min_robust_retention is not None

    def floor_crossed(
        self,
        accuracy: float | None,
        robust: float | None,
        base_acc: float | None,
        base_robust: float | None,
    ) -> str | None:
        """Why a floor is crossed (a short reason), or None."""
        if self.min_accuracy_retention is not None and accuracy is not None and base_acc:
            kept = accuracy / base_acc
            if kept < self.min_accuracy_retention:
                return f"accuracy retention {kept:.3f} < {self.min_accuracy_retention}"
        if self.min_robust_retention is not None and robust is not None and base_robust:
            kept = robust / base_robust
            if kept < self.min_robust_retention:
                return f"robust accuracy retention {kept:.3f} < {self.min_robust_retention}"
        return None

    def budget_met(self, model: Any) -> bool:
        return bool(self.budget(model)) if self.budget is not None else False

    def get_config(self) -> dict[str, Any]:
        """The floors (a budget callable is not serialisable and is left out)."""
        return {
            "min_accuracy_retention": self.min_accuracy_retention,
            "min_robust_retention": self.min_robust_retention,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], budget: Callable[[Any], bool] | None = None
    ) -> StopCriteria:
        return cls(**config, budget=budget)
