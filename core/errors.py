"""The one error hierarchy: every error the project raises on purpose derives from PaodingError.

Each names its problem in one line; the command lines print it as it is and
exit 2. Grouped by where it arises, but one module, so that both the host and
the device side catch the same types.
"""

from __future__ import annotations


class PaodingError(Exception):
    """Base class for every error the project raises on purpose."""


class PaodingWarning(UserWarning):
    """A warning the project issues on purpose; the command lines print it as one line."""


# Arguments, settings and files
class ConfigError(PaodingError, ValueError):
    """An argument or setting is missing or outside its allowed range."""


class DataError(PaodingError, ValueError):
    """Evaluation data does not fit the model."""


class KeyFileError(PaodingError):
    """A key file is missing, unreadable or not a key of the expected kind."""


class StorageError(PaodingError):
    """A state directory or output file is unusable."""


class ProbeError(PaodingError, ValueError):
    """A probe bundle is unreadable or does not follow the documented format."""


class ProfileError(PaodingError, ValueError):
    """A device profile is missing or invalid."""


# Models
class ModelLoadError(PaodingError):
    """A model file is missing, unreadable or corrupt."""


class UnsupportedLayerError(PaodingError, ValueError):
    """The model has a layer the surgery engine cannot prune correctly."""


class ExportError(PaodingError):
    """A model cannot be exported for the requested runtime."""


class RuntimeLoadError(PaodingError):
    """No interpreter is installed, or the interpreter refused the model."""


class BudgetError(PaodingError):
    """No candidate meets the device budgets."""


class FidelityError(PaodingError):
    """A pruned model fell below the fidelity floor."""


# Trust and transfer
class SignatureError(PaodingError):
    """A signature is missing, malformed or does not verify with a trusted key."""


class MessageRejected(PaodingError):
    """A device message is unsigned, signed by another key, for another device or out of range."""


class TransferError(PaodingError):
    """A chunk or an artifact does not fit the manifest."""


# The device
class EmulationError(PaodingError):
    """A device profile cannot be emulated on this host."""


# MQTT
class MqttError(PaodingError):
    """Base class for broker connection errors."""


class BrokerUnavailable(MqttError):
    """The broker cannot be reached or refused the connection."""


class PublishTimeout(MqttError):
    """The broker did not acknowledge a publish in time."""


class NotConnected(MqttError):
    """An operation needs a connection that is not there."""


class BrokerStartError(PaodingError):
    """An embedded or local broker could not be started."""


# Deployments and the command line
class DeployError(PaodingError):
    """A deployment could not be carried out."""


class DeploymentTimeout(DeployError):
    """A device did not report in time."""


class CommandError(PaodingError):
    """A command-line invocation cannot be carried out."""
