"""Signing keys on the host: make a pair, load the private half.

The agent trusts the public half (``paoding-agent run --trust-key DIR/paoding.pub``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from core.signing import (
    SigningKey,
    VerifyKey,
    load_signing_key,
    load_verify_key,
    write_hmac_secret,
    write_key_pair,
)
from fleet.pki import write_private

__all__ = [
    "SigningKey",
    "VerifyKey",
    "load_signing_key",
    "load_verify_key",
    "new_key_pair",
    "write_console_token",
    "write_hmac_secret",
]


def new_key_pair(directory: str, name: str = "paoding", overwrite: bool = False) -> dict[str, str]:
    """Make DIR/NAME.key (private, 0600) and DIR/NAME.pub; return their paths and key id."""
    priv, pub = write_key_pair(directory, name, overwrite=overwrite)
    return {"private": str(priv), "public": str(pub), "key_id": load_verify_key(pub).key_id}


def write_console_token(path: str | os.PathLike[str]) -> None:
    """A random console token (URL-safe text), written 0600 and atomically."""
    write_private(Path(path), (secrets.token_urlsafe(32) + "\n").encode())
