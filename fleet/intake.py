"""The host's gate for what devices say: accept a status, need or report, or drop it with a reason.

Every device message the host acts on passes ``Intake.accept(topic, payload)``:
the topic names an enrolled device, the payload names the same device, the
signature verifies with the public key recorded at enrolment, and every number
is finite and in range (``core.signing.check_device_message``). Anything else
is dropped and logged as ONE line (logger ``paoding.intake``) saying why, and
counted by cause, so forged statuses never reach discovery and forged reports
never reach a deployment's outcome or the registry.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping

from core.errors import KeyFileError, MessageRejected
from core.protocol import DeviceMessage
from core.signing import VerifyKey, check_device_message

log = logging.getLogger("paoding.intake")

# a drop's cause, from the one-line reason (for the counts the campaign reports)
_CAUSES = (
    ("not enrolled", "not_enrolled"),
    ("not signed", "unsigned"),
    ("signed by key", "other_key"),
    ("does not verify", "bad_signature"),
    ("names device", "wrong_device"),
    ("exceed", "oversized"),
    ("malformed", "malformed"),
    ("not a device message", "foreign_topic"),
)


def cause_of(reason: str) -> str:
    """A short name for why a message was dropped (``other`` when none fits)."""
    return next((name for text, name in _CAUSES if text in reason), "other")


class Intake:
    """Accepts device messages signed by their enrolled keys; logs and counts the rest.

    ``public_key(device_id)`` returns the device's enrolled public key as PEM
    (``Registry.public_key``) or None; keys are parsed once and cached by PEM,
    so a re-enrolment takes effect at once. Thread-safe.
    """

    def __init__(self, public_key: Callable[[str], str | None] | Mapping[str, str]) -> None:
        self._lookup = public_key.get if isinstance(public_key, Mapping) else public_key
        self._keys: dict[str, VerifyKey] = {}
        self._lock = threading.Lock()
        self.accepted = 0
        self.dropped: Counter[str] = Counter()

    @classmethod
    def from_registry(cls, registry: object) -> Intake:
        """An intake over a registry's enrolled keys (anything with ``public_key(id)``)."""
        return cls(registry.public_key)  # type: ignore[attr-defined]

    def key_for(self, device_id: str) -> VerifyKey | None:
        with self._lock:
            pem = self._lookup(device_id)
            if pem is None:
                return None
            key = self._keys.get(pem)
            if key is None:
                try:
                    key = VerifyKey.from_pem(pem, f"{device_id}'s enrolled key")
                except KeyFileError as exc:
                    log.warning("enrolled key of %s is unusable: %s", device_id, exc)
                    return None
                self._keys[pem] = key
            return key

    def accept(self, topic: str, payload: bytes) -> DeviceMessage | None:
        """The authenticated message, or None after one log line saying why it was dropped."""
        try:
            message = check_device_message(topic, payload, self.key_for)
        except MessageRejected as exc:
            reason = _printable(str(exc), 400)
            with self._lock:
                self.dropped[cause_of(reason)] += 1
            log.warning("dropped %s: %s", _printable(topic), reason)
            return None
        with self._lock:
            self.accepted += 1
        return message

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def _printable(text: str, limit: int = 160) -> str:
    """A topic fit for one log line: control characters escaped, length bounded."""
    out = text.encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."
