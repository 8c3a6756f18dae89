"""Errors the pruner raises. Each names the problem in one line."""

from __future__ import annotations


class PaodingError(Exception):
    """Base class for every error the project raises on purpose."""


class ModelLoadError(PaodingError):
    """A model file is missing, unreadable or corrupt."""


class UnsupportedLayerError(PaodingError, ValueError):
    """The model has a layer the surgery engine cannot prune correctly."""


class ConfigError(PaodingError, ValueError):
    """An argument is outside its allowed range."""


class DataError(PaodingError, ValueError):
    """Evaluation data does not fit the model."""


class BudgetError(PaodingError):
    """No candidate meets the device budgets."""
