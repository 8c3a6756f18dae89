"""Manifest signatures: Ed25519 (default) or HMAC-SHA256 with a shared secret.

A signature covers ``Manifest.signed_bytes()`` (every manifest field but the
signature: deployment id, the model's sha256 and size, probes, thresholds,
benchmark settings). Keys are identified by ``key_id``: the first 16 hex
digits of the sha256 of the raw public key (Ed25519) or of the secret (HMAC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import KeyFileError, SignatureError
from core.protocol import Manifest, Signature

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

    def sign(self, manifest: Manifest) -> Manifest:
        """A copy of ``manifest`` carrying this key's signature."""
        return manifest.model_copy(update={"signature": self.sign_bytes(manifest.signed_bytes())})

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

    def verify(self, manifest: Manifest) -> str:
        """Verify the manifest's signature; return the key id or raise SignatureError."""
        sig = manifest.signature
        if sig is None:
            raise SignatureError("the manifest is not signed")
        key = self._keys.get(sig.key_id)
        if key is None:
            raise SignatureError(f"manifest signed by unknown key {sig.key_id} "
                                 f"(trusted: {', '.join(sorted(self._keys)) or 'none'})")
        key.verify_bytes(manifest.signed_bytes(), sig)
        return key.key_id


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
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return VerifyKey("ed25519", key_id_of(key.public_bytes(_RAW, _RAW_PUB)), _public=key)


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
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())
    pub.write_bytes(key.public_key().public_pem())
    return priv, pub


def write_hmac_secret(path: str | os.PathLike[str], secret: bytes | None = None) -> Path:
    """Write a shared HMAC secret file (mode 0600)."""
    secret = secret or os.urandom(32)
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"hmac-sha256:" + base64.b64encode(secret) + b"\n")
    return p
