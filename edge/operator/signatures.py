"""Ed25519 signatures on remote commands.

The signed bytes bind the station, the command, its cmd_id, its expiry and its parameters, so a
signed command cannot be replayed to another station, as another command, or after it expired:

    json.dumps(["swapd-cmd-v1", station_id, command, cmd_id, expires_at, params],
               sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

`expires_at` is the string exactly as sent; `params` the JSON object as sent (re-serialised
canonically: sorted keys, no spaces). `sig` is the base64 of the 64-byte signature, `key_id`
names the key. The station holds up to two public keys at once (rotation).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from edge.command_types import ErrorCode, Rejected
from edge.operator.config import PublicKey

DOMAIN = "swapd-cmd-v1"


class KeyLoadError(ValueError):
    """A configured public key cannot be read or is not Ed25519."""


def signed_bytes(
    station_id: str, command: str, cmd_id: str, expires_at: str, params: Mapping[str, Any]
) -> bytes:
    doc = [DOMAIN, station_id, command, cmd_id, expires_at, params]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = load_pem_public_key(text)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as e:
        raise KeyLoadError(f"{where}: not an Ed25519 public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyLoadError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
    return key


def load_keys(keys: list[PublicKey], base: Path | None = None) -> dict[str, Ed25519PublicKey]:
    out: dict[str, Ed25519PublicKey] = {}
    for k in keys:
        if k.credential is not None:
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise KeyLoadError(
                    f"key {k.id}: credential {k.credential!r} but no $CREDENTIALS_DIRECTORY"
                )
            path = Path(cred_dir) / k.credential
        else:
            assert k.file is not None
            path = k.file if k.file.is_absolute() or base is None else base / k.file
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyLoadError(f"key {k.id}: {path}: {e.strerror or e}") from None
        out[k.id] = parse_public_key(data, f"key {k.id} ({path})")
    return out


class Verifier:
    def __init__(self, station_id: str, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.station_id = station_id
        self.keys = dict(keys)
        self.failures = 0

    def verify(
        self,
        command: str,
        cmd_id: str,
        expires_at: str,
        params: Mapping[str, Any],
        key_id: object,
        sig: object,
    ) -> str:
        """The key id that verified; raises Rejected(unauthorized)."""
        if not isinstance(key_id, str) or not isinstance(sig, str):
            self.failures += 1
            raise Rejected(ErrorCode.UNAUTHORIZED, "a signature (sig, key_id) is required")
        key = self.keys.get(key_id)
        if key is None:
            self.failures += 1
            raise Rejected(ErrorCode.UNAUTHORIZED, f"unknown key_id {key_id[:64]!r}")
        try:
            raw = base64.b64decode(sig, validate=True)
            key.verify(raw, signed_bytes(self.station_id, command, cmd_id, expires_at, params))
        except (binascii.Error, ValueError, InvalidSignature):
            self.failures += 1
            raise Rejected(ErrorCode.UNAUTHORIZED, "signature does not verify") from None
        return key_id
