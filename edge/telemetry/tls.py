"""TLS context for the MQTT link: TLS 1.2+, hostname verification on unless the config says
otherwise, files from paths or from systemd credentials ($CREDENTIALS_DIRECTORY)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from edge.telemetry.config import TlsConfig


class TlsSetupError(ValueError):
    pass


def _resolve(file: Path | None, credential: str | None, what: str) -> Path | None:
    if credential is not None:
        base = os.environ.get("CREDENTIALS_DIRECTORY")
        if not base:
            raise TlsSetupError(
                f"tls.{what}_credential {credential!r} given but $CREDENTIALS_DIRECTORY is unset"
                " (systemd LoadCredential=)"
            )
        p = Path(base) / credential
        if not p.is_file():
            raise TlsSetupError(f"tls.{what}_credential: {p} not found")
        return p
    if file is not None and not file.is_file():
        raise TlsSetupError(f"tls.{what}_file: {file} not found")
    return file


def build_context(cfg: TlsConfig) -> ssl.SSLContext:
    ca = _resolve(cfg.ca_file, cfg.ca_credential, "ca")
    cert = _resolve(cfg.cert_file, cfg.cert_credential, "cert")
    key = _resolve(cfg.key_file, cfg.key_credential, "key")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.verify_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as e:
            raise TlsSetupError(f"tls: cannot load client certificate/key: {e}") from e
    return ctx
