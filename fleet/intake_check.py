"""Turn one device message from the intake into a checked protocol object.

A message is accepted only when it parses (finite numbers, ranges: the
protocol models check them), the device id in the topic equals the one in the
payload, and its signature verifies with the device's enrolled key
(``core.signing.check_device_message``). With no device enrolled at all (a
fleet set up without enrolment) only the first two are checked. Anything else
is a ``ValueError`` whose text says why the message was dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import ValidationError

from core.errors import MessageRejected
from core.protocol import DEVICE_MODELS, TOPIC_ROOT, ChunkRequest, Report, Status
from core.signing import VerifyKey, check_device_message, one_line

DeviceMessage = Status | Report | ChunkRequest
Check = Callable[[str, str, bytes], DeviceMessage]


def device_message(kind: str, device_id: str, payload: bytes,
                   keys: Mapping[str, VerifyKey] | None = None) -> DeviceMessage:
    """The checked message, or ValueError naming why it is dropped."""
    if keys is not None:
        try:
            return check_device_message(f"{TOPIC_ROOT}/{device_id}/{kind}", payload, keys.get)
        except MessageRejected as exc:
            raise ValueError(str(exc)) from None
    model = DEVICE_MODELS.get(kind)
    if model is None:
        raise ValueError(f"{kind!r} is not a device message")
    try:
        msg = model.from_json(payload)
    except (ValidationError, ValueError) as exc:
        raise ValueError(f"{kind} from {device_id} malformed: {one_line(exc)}") from None
    if msg.device_id != device_id:
        raise ValueError(f"{kind} on {device_id}'s topic names device {msg.device_id}")
    return msg


def checker(keys: Mapping[str, VerifyKey] | None = None) -> Check:
    """A check bound to the enrolled keys (None: signatures are not required)."""
    return lambda kind, device_id, payload: device_message(kind, device_id, payload, keys)


def keys_from_pems(pems: Mapping[str, str]) -> dict[str, VerifyKey]:
    """Enrolled devices' public keys (PEM text, as the registry holds them), by device id."""
    return {d: VerifyKey.from_pem(pem, f"{d}'s enrolled key") for d, pem in pems.items()}
