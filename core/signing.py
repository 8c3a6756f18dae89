"""Signatures: host messages (Ed25519 or HMAC-SHA256) and device messages (Ed25519).

A signature covers ``signed_bytes()`` of its message (every field but the
signature). The host signs manifests and cancels with its key; the agent
trusts it through a ``TrustStore``. Each device signs its Status, Report and
ChunkRequest with its own Ed25519 key; the host accepts a device message only
through ``check_device_message`` (topic, enrolled key, signature, ranges).
Keys are identified by ``key_id``: the first 16 hex digits of the sha256 of
the raw public key (Ed25519) or of the secret (HMAC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from core.errors import KeyFileError, MessageRejected, SignatureError
from core.protocol import (
    DEVICE_KINDS,
    DEVICE_MODELS,
    MAX_MESSAGE_BYTES,
    Cancel,
    DeviceMessage,
    DeviceSignature,
    Manifest,
    Signature,
    parse_device_topic,
)

HostSigned = TypeVar("HostSigned", Manifest, Cancel)
DeviceSigned = TypeVar("DeviceSigned", bound=DeviceMessage)

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def key_id_of(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A key that signs: an Ed25519 private key or an HMAC secret."""

    alg: str
    key_id: str
    _private: Ed25519PrivateKey | None = field(default=None, repr=False)
    _secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_ed25519(Ed25519PrivateKey.generate())

    @classmethod
    def from_ed25519(cls, private: Ed25519PrivateKey) -> SigningKey:
        raw = private.public_key().public_bytes(_RAW, _RAW_PUB)
        return cls("ed25519", key_id_of(raw), _private=private)

    @classmethod
    def hmac(cls, secret: bytes) -> SigningKey:
        if len(secret) < 16:
            raise KeyFileError("an HMAC secret must have at least 16 bytes")
        return cls("hmac-sha256", key_id_of(secret), _secret=secret)

    def public_key(self) -> VerifyKey:
        if self._private is not None:
            return VerifyKey("ed25519", self.key_id, _public=self._private.public_key())
        return VerifyKey("hmac-sha256", self.key_id, _secret=self._secret)

    def sign_bytes(self, data: bytes) -> Signature:
        if self._private is not None:
            sig = self._private.sign(data)
        else:
            assert self._secret is not None
            sig = hmac.new(self._secret, data, hashlib.sha256).digest()
        return Signature(alg=self.alg, key_id=self.key_id,  # type: ignore[arg-type]
                         value=base64.b64encode(sig).decode())

    def sign(self, message: HostSigned) -> HostSigned:
        """A copy of ``message`` (a Manifest or a Cancel) carrying this key's signature."""
        return message.model_copy(update={"signature": self.sign_bytes(message.signed_bytes())})

    def sign_device(self, message: DeviceSigned) -> DeviceSigned:
        """A copy of a device message (Status, Report, ChunkRequest) signed by this device key."""
        if self._private is None:
            raise KeyFileError("a device key must be Ed25519, not an HMAC secret")
        sig = self._private.sign(message.signed_bytes())
        return message.model_copy(update={"signature": DeviceSignature(
            key_id=self.key_id, value=base64.b64encode(sig).decode())})

    def private_pem(self) -> bytes:
        if self._private is None:
            raise KeyFileError("an HMAC key has no PEM form; store the secret itself")
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())


@dataclass(frozen=True)
class VerifyKey:
    """A key the agent trusts: an Ed25519 public key or an HMAC secret."""

    alg: str
    key_id: str
    _public: Ed25519PublicKey | None = field(default=None, repr=False)
    _secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_pem(cls, pem: bytes | str, what: str = "public key") -> VerifyKey:
        """An Ed25519 public key from PEM text (as the registry stores a device's key)."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{what} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{what} holds a {type(key).__name__}, not an Ed25519 key")
        return cls("ed25519", key_id_of(key.public_bytes(_RAW, _RAW_PUB)), _public=key)

    def public_pem(self) -> bytes:
        if self._public is None:
            raise KeyFileError("an HMAC key has no public half")
        return self._public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify_bytes(self, data: bytes, signature: Signature) -> None:
        if signature.alg != self.alg or signature.key_id != self.key_id:
            raise SignatureError(f"signature by {signature.alg} key {signature.key_id} does "
                                 f"not match trusted key {self.key_id}")
        try:
            sig = base64.b64decode(signature.value, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature value is not valid base64") from None
        if self._public is not None:
            try:
                self._public.verify(sig, data)
            except InvalidSignature:
                raise SignatureError(
                    f"Ed25519 signature does not verify with trusted key {self.key_id}") from None
        else:
            assert self._secret is not None
            want = hmac.new(self._secret, data, hashlib.sha256).digest()
            if not hmac.compare_digest(want, sig):
                raise SignatureError(
                    f"HMAC signature does not verify with trusted key {self.key_id}")


class TrustStore:
    """The keys an agent trusts, by key id."""

    def __init__(self, keys: list[VerifyKey] | None = None) -> None:
        self._keys = {k.key_id: k for k in keys or []}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: VerifyKey) -> None:
        self._keys[key.key_id] = key

    def verify(self, message: Manifest | Cancel) -> str:
        """Verify a host message's signature; return the key id or raise SignatureError."""
        sig = message.signature
        what = message.type
        if sig is None:
            raise SignatureError(f"the {what} is not signed")
        key = self._keys.get(sig.key_id)
        if key is None:
            raise SignatureError(f"{what} signed by unknown key {sig.key_id} "
                                 f"(trusted: {', '.join(sorted(self._keys)) or 'none'})")
        key.verify_bytes(message.signed_bytes(), sig)
        return key.key_id


# --- device messages on the host ------------------------------------------------


def verify_device_message(message: DeviceMessage, device_id: str,
                          key: VerifyKey | None) -> None:
    """Accept ``message`` as said by ``device_id`` (enrolled with ``key``) or raise.

    MessageRejected names the reason in one line: another device's id in the
    payload, a device that is not enrolled, no signature, a signature by
    another key or one that does not verify.
    """
    if message.device_id != device_id:
        raise MessageRejected(f"{message.type} on {device_id}'s topic names device "
                              f"{message.device_id}")
    if key is None:
        raise MessageRejected(f"{message.type} from {device_id}: device not enrolled "
                              "(no public key)")
    sig = message.signature
    if sig is None:
        raise MessageRejected(f"{message.type} from {device_id} is not signed")
    if key.alg != "ed25519" or sig.key_id != key.key_id:
        raise MessageRejected(f"{message.type} from {device_id} signed by key {sig.key_id}, "
                              f"not its enrolled key {key.key_id}")
    try:
        key.verify_bytes(message.signed_bytes(),
                         Signature(alg="ed25519", key_id=sig.key_id, value=sig.value))
    except SignatureError:
        raise MessageRejected(f"{message.type} from {device_id}: signature does not verify "
                              f"with its enrolled key {key.key_id}") from None


def check_device_message(topic: str, payload: bytes,
                         key_for: Callable[[str], VerifyKey | None]) -> DeviceMessage:
    """Parse and authenticate one message from ``paoding/v2/devices/<id>/<kind>``.

    ``key_for(device_id)`` returns the device's enrolled public key (None: not
    enrolled). Returns the Status, Report or ChunkRequest; raises
    MessageRejected with a one-line reason for anything else: a foreign
    topic, an oversized or malformed payload, a number that is not finite or
    out of range (latencies >= 0 and < 1e6 ms, memory >= 0, accuracies in
    [0, 1], counts >= 0), a control character, or a failed ``verify_device_message``.
    """
    try:
        device_id, kind = parse_device_topic(topic)
    except ValueError as exc:
        raise MessageRejected(str(exc)) from None
    if kind not in DEVICE_KINDS:
        raise MessageRejected(f"{topic}: {kind!r} is not a device message")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageRejected(f"{kind} from {device_id}: {len(payload)} bytes exceed "
                              f"{MAX_MESSAGE_BYTES}")
    try:
        message = DEVICE_MODELS[kind].from_json(payload)
    except (ValidationError, ValueError) as exc:
        raise MessageRejected(f"{kind} from {device_id} malformed: {one_line(exc)}") from None
    verify_device_message(message, device_id, key_for(device_id))
    return message


def one_line(exc: Exception, limit: int = 300) -> str:
    """A validation error (or any error) as one short line naming the fields."""
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                         for e in exc.errors()[:3])
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- key files ----------------------------------------------------------------


def _read(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc.strerror or exc}") from None


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """A PEM Ed25519 private key, or a file 'hmac-sha256:<base64 secret>'."""
    data = _read(path)
    if data.startswith(b"hmac-sha256:"):
        return SigningKey.hmac(_b64(data[len(b"hmac-sha256:"):], path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return SigningKey.from_ed25519(key)


def load_verify_key(path: str | os.PathLike[str]) -> VerifyKey:
    """A PEM Ed25519 public key, or a file 'hmac-sha256:<base64 secret>'."""
    data = _read(path)
    if data.startswith(b"hmac-sha256:"):
        return SigningKey.hmac(_b64(data[len(b"hmac-sha256:"):], path)).public_key()
    return VerifyKey.from_pem(data, str(path))


def _b64(data: bytes, path: str | os.PathLike[str]) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: the HMAC secret is not valid base64") from None


def write_key_pair(directory: str | os.PathLike[str], name: str = "paoding",
                   *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write DIR/NAME.key (private, mode 0600) and DIR/NAME.pub; return both paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    if not overwrite and (priv.exists() or pub.exists()):
        raise KeyFileError(f"{priv} or {pub} already exists (refusing to overwrite)")
    key = SigningKey.generate()
    if overwrite:
        priv.unlink(missing_ok=True)
    _write_private(priv, key)
    pub.write_bytes(key.public_key().public_pem())
    return priv, pub


def _write_private(path: Path, key: SigningKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())
        f.flush()
        os.fsync(f.fileno())


def device_key(path: str | os.PathLike[str], *, create: bool = True) -> SigningKey:
    """The device's Ed25519 key at ``path``, made (mode 0600) on first use if ``create``."""
    p = Path(path)
    if not p.exists() and create:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_private(p, SigningKey.generate())
        except FileExistsError:
            pass  # made concurrently: load that one
    key = load_signing_key(p)
    if key.alg != "ed25519":
        raise KeyFileError(f"{p}: a device key must be Ed25519, not an HMAC secret")
    return key


def write_hmac_secret(path: str | os.PathLike[str], secret: bytes | None = None) -> Path:
    """Write a shared HMAC secret file (mode 0600)."""
    secret = secret or os.urandom(32)
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"hmac-sha256:" + base64.b64encode(secret) + b"\n")
    return p
