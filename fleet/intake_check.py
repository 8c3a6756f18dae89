"""Turn one device message from the intake into a checked protocol object.

A message is accepted only when it parses (finite numbers, ranges: the
protocol models check them), the device id in the topic equals the one in the
payload, and, when the device's public key is known, its signature verifies.
Anything else is a ``ValueError`` whose text says why it was dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from core.errors import KeyFileError, SignatureError
from core.protocol import DEVICE_MODELS, ChunkRequest, Report, Signature, Status
from core.signing import VerifyKey, key_id_of

DeviceMessage = Status | Report | ChunkRequest
Check = Callable[[str, str, bytes], DeviceMessage]


def device_message(kind: str, device_id: str, payload: bytes,
                   keys: Mapping[str, VerifyKey] | None = None) -> DeviceMessage:
    """The checked message, or ValueError naming why it is dropped."""
    model = DEVICE_MODELS.get(kind)
    if model is None:
        raise ValueError(f"{kind!r} is not a device message")
    try:
        msg = model.from_json(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        raise ValueError(f"{kind} from {device_id}: {where}: {err['msg']}") from None
    if msg.device_id != device_id:
        raise ValueError(f"{kind} on {device_id}'s topic names device {msg.device_id}")
    if keys is not None:
        key = keys.get(device_id)
        if key is None:
            raise ValueError(f"{kind} from {device_id}: device not enrolled")
        sig = msg.signature
        if sig is None:
            raise ValueError(f"{kind} from {device_id} is not signed")
        try:
            base64.b64decode(sig.value, validate=True)
            key.verify_bytes(msg.signed_bytes(), Signature(alg=key.alg, key_id=sig.key_id,
                                                           value=sig.value))
        except (SignatureError, ValueError) as exc:
            raise ValueError(f"{kind} from {device_id}: {exc}") from None
    return msg


def checker(keys: Mapping[str, VerifyKey] | None = None) -> Check:
    """A check bound to the enrolled keys (None: signatures are not required)."""
    return lambda kind, device_id, payload: device_message(kind, device_id, payload, keys)


def keys_from_pems(pems: Mapping[str, str]) -> dict[str, VerifyKey]:
    """Enrolled devices' public keys (PEM text, as the registry holds them), by device id."""
    out: dict[str, VerifyKey] = {}
    for device_id, pem in pems.items():
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"device {device_id}: enrolled key is not PEM: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"device {device_id}: enrolled key is not Ed25519")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out[device_id] = VerifyKey("ed25519", key_id_of(raw), _public=key)
    return out
