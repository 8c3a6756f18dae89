"""Ed25519 and HMAC manifest signatures, key files."""

from __future__ import annotations

import pytest

from core.errors import KeyFileError, SignatureError
from core.protocol import Manifest
from core.signing import (
    SigningKey,
    TrustStore,
    load_signing_key,
    load_verify_key,
    write_hmac_secret,
    write_key_pair,
)


def manifest() -> Manifest:
    return Manifest(deployment_id="d1", device_id="pi-1",
                    model={"sha256": "b" * 64, "size": 1000})


def test_ed25519_sign_and_verify(tmp_path):
    priv, pub = write_key_pair(tmp_path)
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    key = load_signing_key(priv)
    trust = TrustStore([load_verify_key(pub)])
    signed = key.sign(manifest())
    assert trust.verify(signed) == key.key_id


def test_tampered_manifest_fails():
    key = SigningKey.generate()
    signed = key.sign(manifest())
    tampered = signed.model_copy(update={"model": signed.model.model_copy(
        update={"size": 1001})})
    with pytest.raises(SignatureError, match="does not verify"):
        TrustStore([key.public_key()]).verify(tampered)


def test_unknown_key_and_unsigned():
    signed = SigningKey.generate().sign(manifest())
    trust = TrustStore([SigningKey.generate().public_key()])
    with pytest.raises(SignatureError, match="unknown key"):
        trust.verify(signed)
    with pytest.raises(SignatureError, match="not signed"):
        trust.verify(manifest())


def test_hmac(tmp_path):
    path = write_hmac_secret(tmp_path / "k.hmac")
    key = load_signing_key(path)
    signed = key.sign(manifest())
    assert TrustStore([load_verify_key(path)]).verify(signed) == key.key_id
    other = SigningKey.hmac(b"x" * 32)
    forged = signed.model_copy(update={"signature": other.sign_bytes(b"nope").model_copy(
        update={"key_id": key.key_id})})
    with pytest.raises(SignatureError, match="HMAC"):
        TrustStore([load_verify_key(path)]).verify(forged)


def test_bad_key_files(tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_verify_key(tmp_path / "junk.pem")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signing_key(tmp_path / "missing.key")
    write_key_pair(tmp_path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_pair(tmp_path)
