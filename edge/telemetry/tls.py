"""TLS context for the MQTT link: TLS 1.2+, hostname verification on unless the config says
otherwise, files from paths or from systemd credentials ($CREDENTIALS_DIRECTORY)."""

from __future__ import annotations

import os
import ssl
import weakref
from pathlib import Path
from typing import Any

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


class TrackingContext(ssl.SSLContext):
    """paho drops the socket of a failed TLS handshake without closing it; this context
    remembers what it wrapped so the link can close strays after a failed attempt."""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        _made.setdefault(self, weakref.WeakSet()).add(sock)
        return sock

    def close_strays(self) -> None:
        for sock in list(_made.get(self, ())):
            sock.close()


_made: weakref.WeakKeyDictionary[TrackingContext, weakref.WeakSet[ssl.SSLSocket]] = (
    weakref.WeakKeyDictionary()
)


def build_context(cfg: TlsConfig) -> TrackingContext:
    ca = _resolve(cfg.ca_file, cfg.ca_credential, "ca")
    cert = _resolve(cfg.cert_file, cfg.cert_credential, "cert")
    key = _resolve(cfg.key_file, cfg.key_credential, "key")
    ctx = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.verify_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as e:
            raise TlsSetupError(f"tls: cannot load client certificate/key: {e}") from e
    return ctx
