"""The one gate every device message passes before the host stores or acts on it.

``Gate.admit(topic, payload)`` returns the checked ``DeviceMessage`` or a
``Rejection`` naming its cause. In order, cheapest first:

1. the topic is ``paoding/v2/devices/<id>/<status|need|report>`` (``foreign_topic``);
2. the payload fits the size limit of its kind (``oversized``);
3. the device is within its rate: messages and bytes per second, as token
   buckets (``rate``); the broker's ACL lets a device publish only on its own
   topics, so the topic's id is the one the broker authenticated;
4. it parses, every number finite and in range, no control characters
   (``malformed``), and names the topic's device (``wrong_device``);
5. the device is enrolled (``not_enrolled``) and the message is signed by its
   enrolled key (``unsigned``, ``other_key``, ``bad_signature``);
6. a report or need names a deployment that belongs to this device and is in
   flight (``not_in_flight``), as the ``in_flight(device_id, deployment_id)``
   callable given by the deployment engine says.

A rejection is logged as one line (logger ``paoding.intake``) and counted by
cause; nothing of it is stored. ``Gate.save(registry)`` adds the counts to the
registry, where ``paoding-edge fleet`` shows them. Without enrolled keys
(``require_signature=False``: a fleet set up without enrolment) step 5 is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from core.errors import KeyFileError, MessageRejected
from core.protocol import (
    DEVICE_KINDS,
    DEVICE_MODELS,
    TOPIC_ROOT,
    ChunkRequest,
    DeviceMessage,
    Report,
    parse_device_topic,
)
from core.signing import VerifyKey, one_line, verify_device_message

log = logging.getLogger("paoding.intake")

InFlight = Callable[[str, str], bool]  # (device id, deployment id) -> it is in flight
KeyLookup = Callable[[str], "str | VerifyKey | None"]
Check = Callable[[str, str, bytes], DeviceMessage]  # (kind, device id, payload); ValueError

# a signature failure's cause, from core.signing's one-line reason
_SIGNATURE_CAUSES = (("names device", "wrong_device"), ("not enrolled", "not_enrolled"),
                     ("not signed", "unsigned"), ("signed by key", "other_key"),
                     ("does not verify", "bad_signature"))


# causes that mean "signed, but not by the enrolled key": a deployment in flight fails at once
KEY_MISMATCH = frozenset({"other_key", "bad_signature"})


class Refused(ValueError):
    """``Gate.check``'s error: the rejection's one-line reason, with the cause it counts under."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.cause = rejection.cause


@dataclass(frozen=True)
class Limits:
    """Per-device bounds: bytes per message (by kind) and a rate in messages and bytes.

    A device sends a few statuses, one need per window of missing chunks and
    a handful of reports per deployment; a burst of 100 messages and 5/s
    sustained is far above that and far below a flood.
    """

    status_bytes: int = 16 * 1024
    need_bytes: int = 128 * 1024  # up to MAX_RANGES chunk ranges
    report_bytes: int = 64 * 1024
    messages_per_s: float = 5.0
    message_burst: int = 100
    bytes_per_s: float = 64 * 1024
    byte_burst: int = 1024 * 1024
    max_devices: int = 100_000  # rate buckets kept (the oldest are forgotten beyond)

    def max_bytes(self, kind: str) -> int:
        return {"status": self.status_bytes, "need": self.need_bytes,
                "report": self.report_bytes}[kind]


@dataclass(frozen=True)
class Rejection:
    """Why a device message was not admitted (one line) and the cause it is counted under."""

    cause: str
    reason: str
    topic: str

    def __bool__(self) -> bool:  # a rejection is never mistaken for a message
        return False


class _Bucket:
    __slots__ = ("messages", "bytes", "at")

    def __init__(self, limits: Limits, now: float) -> None:
        self.messages = float(limits.message_burst)
        self.bytes = float(limits.byte_burst)
        self.at = now

    def take(self, size: int, limits: Limits, now: float) -> bool:
        dt = max(0.0, now - self.at)
        self.at = now
        self.messages = min(limits.message_burst, self.messages + dt * limits.messages_per_s)
        self.bytes = min(limits.byte_burst, self.bytes + dt * limits.bytes_per_s)
        if self.messages < 1 or self.bytes < size:
            return False
        self.messages -= 1
        self.bytes -= size
        return True


class Gate:
    """Admits device messages (see the module doc); thread-safe.

    ``public_key(device_id)`` (or a mapping) gives the enrolled key as PEM
    text or a ``VerifyKey``, None when not enrolled; PEM keys are parsed once
    and cached by text, so a re-enrolment takes effect at once.
    """

    def __init__(self, public_key: KeyLookup | Mapping[str, str | VerifyKey] | None = None, *,
                 in_flight: InFlight | None = None, limits: Limits | None = None,
                 require_signature: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if public_key is None:
            public_key = {}
        self._lookup = public_key.get if isinstance(public_key, Mapping) else public_key
        self.in_flight = in_flight
        self.limits = limits or Limits()
        self.require_signature = require_signature
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.admitted = 0
        self.rejected: Counter[str] = Counter()
        self.last_reason: dict[str, str] = {}
        self._saved: Counter[str] = Counter()

    # -- the one API -------------------------------------------------------------
    def admit(self, topic: str, payload: bytes) -> DeviceMessage | Rejection:
        """The checked message, or the Rejection (logged and counted) saying why not."""
        try:
            message = self._check(topic, payload)
        except MessageRejected as exc:
            cause, reason = exc.args if len(exc.args) == 2 else ("malformed", str(exc))
            return self._reject(cause, _printable(reason, 400), topic)
        with self._lock:
            self.admitted += 1
        return message

    def check(self, kind: str, device_id: str, payload: bytes) -> DeviceMessage:
        """``admit`` for a message already split by topic; ValueError naming the rejection."""
        got = self.admit(f"{TOPIC_ROOT}/{device_id}/{kind}", payload)
        if isinstance(got, Rejection):
            raise Refused(got)
        return got

    def save(self, registry: object) -> None:
        """Add the rejections counted since the last save to ``registry`` (``add_rejections``)."""
        with self._lock:
            delta = self.rejected - self._saved
            self._saved = Counter(self.rejected)
            last = {c: self.last_reason[c] for c in delta}
        if delta:
            registry.add_rejections(dict(delta), last)  # type: ignore[attr-defined]

    # -- the checks --------------------------------------------------------------
    def _check(self, topic: str, payload: bytes) -> DeviceMessage:
        try:
            device_id, kind = parse_device_topic(topic)
        except ValueError as exc:
            raise MessageRejected("foreign_topic", str(exc)) from None
        if kind not in DEVICE_KINDS:
            raise MessageRejected("foreign_topic", f"{kind!r} is not a device message")
        limit = self.limits.max_bytes(kind)
        if len(payload) > limit:
            raise MessageRejected("oversized", f"{kind} from {device_id}: {len(payload)} bytes "
                                               f"exceed {limit}")
        if not self._take(device_id, len(payload)):
            raise MessageRejected("rate", f"{kind} from {device_id}: over its rate of "
                                          f"{self.limits.messages_per_s:g} messages/s, "
                                          f"{self.limits.bytes_per_s:g} bytes/s")
        try:
            message = DEVICE_MODELS[kind].from_json(payload)
        except (ValidationError, ValueError) as exc:
            raise MessageRejected("malformed", f"{kind} from {device_id} malformed: "
                                               f"{one_line(exc)}") from None
        if message.device_id != device_id:
            raise MessageRejected("wrong_device", f"{kind} on {device_id}'s topic names device "
                                                  f"{message.device_id}")
        if self.require_signature:
            try:
                verify_device_message(message, device_id, self.key_for(device_id))
            except MessageRejected as exc:
                reason = str(exc)
                cause = next((c for text, c in _SIGNATURE_CAUSES if text in reason),
                             "bad_signature")
                raise MessageRejected(cause, reason) from None
        if self.in_flight is not None and isinstance(message, Report | ChunkRequest):
            dep = message.deployment_id
            if dep is not None and not self.in_flight(device_id, dep):
                raise MessageRejected("not_in_flight", f"{kind} from {device_id}: deployment "
                                                       f"{dep} is not its deployment in flight")
        return message

    def key_for(self, device_id: str) -> VerifyKey | None:
        found = self._lookup(device_id)
        if found is None or isinstance(found, VerifyKey):
            return found
        with self._lock:
            key = self._keys.get(found)
        if key is None:
            try:
                key = VerifyKey.from_pem(found, f"{device_id}'s enrolled key")
            except KeyFileError as exc:
                log.warning("enrolled key of %s is unusable: %s", device_id, exc)
                return None
            with self._lock:
                self._keys[found] = key
        return key

    def _take(self, device_id: str, size: int) -> bool:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(device_id)
            if bucket is None:
                if len(self._buckets) >= self.limits.max_devices:
                    self._buckets.pop(next(iter(self._buckets)))
                bucket = self._buckets[device_id] = _Bucket(self.limits, now)
            return bucket.take(size, self.limits, now)

    def _reject(self, cause: str, reason: str, topic: str) -> Rejection:
        with self._lock:
            self.rejected[cause] += 1
            self.last_reason[cause] = reason
        shown = _printable(topic)
        log.warning("dropped %s: %s", shown, reason)
        return Rejection(cause, reason, shown)


def checker(keys: Mapping[str, VerifyKey] | None = None, *,
            in_flight: InFlight | None = None) -> Check:
    """A gate's ``check`` over enrolled keys (None: signatures are not required)."""
    return Gate(keys, in_flight=in_flight, require_signature=keys is not None).check


def keys_from_pems(pems: Mapping[str, str]) -> dict[str, VerifyKey]:
    """Enrolled devices' public keys (PEM text, as the registry holds them), by device id."""
    return {d: VerifyKey.from_pem(pem, f"{d}'s enrolled key") for d, pem in pems.items()}


def _printable(text: str, limit: int = 160) -> str:
    """Text fit for one log line: control characters escaped, length bounded."""
    out = text.encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."
