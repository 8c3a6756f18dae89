"""Errors the agent raises on purpose. Each names the problem in one line."""

from __future__ import annotations

from pruner.errors import PaodingError


class AgentError(PaodingError):
    """Base class for the agent's deliberate errors."""


class ConfigurationError(AgentError, ValueError):
    """A setting is missing or outside its allowed range."""


class SignatureError(AgentError):
    """A signature is missing, malformed or does not verify with a trusted key."""


class KeyFileError(AgentError):
    """A key file is missing, unreadable or not a key of the expected kind."""


class TransferError(AgentError):
    """A chunk or an artifact does not fit the manifest."""


class StorageError(AgentError):
    """The state directory is unusable."""


class RuntimeLoadError(AgentError):
    """No interpreter is installed, or the interpreter refused the model."""


class ProbeError(AgentError, ValueError):
    """A probe bundle does not follow the documented format."""
