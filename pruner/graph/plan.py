"""What a strategy hands to surgery: per group, the units to remove and the merges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError


@dataclass
class GroupPlan:
    """Units to remove from one group and the merges that compensate some of them."""

    remove: list[int] = field(default_factory=list)
    merges: list[tuple[int, int, float]] = field(default_factory=list)  # (keep, remove, gamma)


Plan = dict[str, GroupPlan]  # producer layer name -> its plan


def validate(group: Any, gp: GroupPlan) -> np.ndarray:
    n = group.width
    remove = np.unique(np.asarray(gp.remove, dtype=np.int64))
    if remove.size != len(gp.remove):
        raise ConfigError(f"{group.name}: a unit is listed for removal twice")
    if remove.size and (remove[0] < 0 or remove[-1] >= n):
        raise ConfigError(f"{group.name}: unit index out of range [0, {n})")
    if remove.size >= n:
        raise ConfigError(f"{group.name}: a layer must keep at least one unit")
    removed = set(remove.tolist())
    for a, b, g in gp.merges:
        if b not in removed:
            raise ConfigError(f"{group.name}: merge source {b} is not removed")
        if a in removed:
            raise ConfigError(f"{group.name}: merge target {a} is itself removed")
        if not np.isfinite(g):
            raise ConfigError(f"{group.name}: merge factor must be finite")
    return np.setdiff1d(np.arange(n), remove)
