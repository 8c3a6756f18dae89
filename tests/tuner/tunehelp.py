"""Shared constants of the tuner tests (a module of its own: 'conftest' is ambiguous)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A quick search: three pruning steps of 20%.
TUNE_KW = dict(max_ratio=0.6, step=0.2, progress=False)
