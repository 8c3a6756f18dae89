"""`paoding-edge keys`: make an Ed25519 signing key pair (or an HMAC secret)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = sub.add_parser("new", help="make DIR/NAME.key (private) and DIR/NAME.pub (public)")
    new.add_argument("dir", help="directory for the key files (created if missing)")
    new.add_argument("--name", default="paoding", help="file name stem (default paoding)")
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    new.add_argument("--hmac", action="store_true",
                     help="make a shared HMAC-SHA256 secret DIR/NAME.hmac instead")
    show = sub.add_parser("show", help="print the key id of a key file")
    show.add_argument("file")
    tok = sub.add_parser("console-token",
                         help="make DIR/console.token: the secret that turns on the "
                         "console's actions (paoding-edge console --token FILE)")
    tok.add_argument("dir", help="directory for the token file (created if missing)")
    tok.add_argument("--force", action="store_true", help="overwrite an existing token")


def run(args: argparse.Namespace) -> int:
    import secrets
    from pathlib import Path

    from core.errors import KeyFileError
    from core.signing import load_signing_key, load_verify_key, write_hmac_secret, write_key_pair
    from fleet.pki import write_private

    if args.keys_command == "console-token":
        path = Path(args.dir) / "console.token"
        if path.exists() and not args.force:
            raise KeyFileError(f"{path} already exists (use --force to overwrite)")
        write_private(path, (secrets.token_urlsafe(32) + "\n").encode())  # 0600, atomic
        print(f"console token: {path} (paoding-edge console --token {path}; "
              "give its text to whoever may act)")
        return 0
    if args.keys_command == "show":
        try:
            key = load_verify_key(args.file)
        except KeyFileError:
            key = load_signing_key(args.file).public_key()
        print(f"{key.alg} key {key.key_id}")
        return 0
    if args.hmac:
        path = Path(args.dir) / f"{args.name}.hmac"
        if path.exists() and not args.force:
            raise KeyFileError(f"{path} already exists (use --force to overwrite)")
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        write_hmac_secret(path)
        print(f"HMAC secret: {path} (key id {load_verify_key(path).key_id}); "
              "give the same file to the agent with --trust-hmac")
        return 0
    try:
        private, public = write_key_pair(args.dir, args.name, overwrite=args.force)
    except KeyFileError as exc:
        raise KeyFileError(f"{exc} (use --force to overwrite)") from None
    print(f"private key: {private} (keep it on the host)")
    print(f"public key:  {public} (give it to agents: --trust-key)")
    print(f"key id:      {load_verify_key(public).key_id}")
    return 0
