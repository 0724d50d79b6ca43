"""TLS against a Mosquitto listener that requires client certificates, with a test CA."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge.telemetry.link import LinkState
from tests.conftest import Broker, free_port
from tests.edge.telemetry_fixtures import STATION_ID, make_telemetry, recorder, running

ROOT = f"swapstation/v1/{STATION_ID}"


class Pki:
    def __init__(self, d: Path) -> None:
        ca = trustme.CA()
        self.ca = d / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        good = ca.issue_cert("localhost", "127.0.0.1")
        wrong = ca.issue_cert("wrong.example")
        client = ca.issue_cert(f"swapd-{STATION_ID}")
        self.files: dict[str, Path] = {}
        for name, cert in (("good", good), ("wrong", wrong), ("client", client)):
            key, crt = d / f"{name}.key", d / f"{name}.pem"
            cert.private_key_pem.write_to_path(str(key))
            crt.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
            self.files[name + "_key"], self.files[name + "_cert"] = key, crt

    def listener(self, port: int, which: str) -> str:
        return "\n".join(
            [
                f"listener {port} 127.0.0.1",
                f"cafile {self.ca}",
                f"certfile {self.files[which + '_cert']}",
                f"keyfile {self.files[which + '_key']}",
                "require_certificate true",
                "tls_version tlsv1.2",
            ]
        )


@pytest.fixture
def tls_broker(broker_factory: type[Broker], tmp_path: Path) -> tuple[Broker, Pki, int, int]:
    pki = Pki(tmp_path)
    good_port, wrong_port = free_port(), free_port()
    b = broker_factory(pki.listener(good_port, "good") + "\n" + pki.listener(wrong_port, "wrong"))
    b.start()
    return b, pki, good_port, wrong_port


def _tls(pki: Pki, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ca_file": pki.ca,
        "cert_file": pki.files["client_cert"],
        "key_file": pki.files["client_key"],
    }
    d.update(kw)
    return d


async def _wait_state(pred: Any, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.02)


async def test_tls_with_client_certificate(
    tls_broker: tuple[Broker, Pki, int, int], tmp_path: Path
) -> None:
    b, pki, port, _ = tls_broker
    tel = make_telemetry("127.0.0.1", port, tmp_path, mqtt={"tls": _tls(pki)})
    async with recorder(b.host, b.port, f"{ROOT}/status") as rec, running(tel):
        await rec.wait_for(lambda: any(m.json()["online"] for m in rec.messages))


async def test_tls_from_systemd_credentials(
    tls_broker: tuple[Broker, Pki, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, pki, port, _ = tls_broker
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-ca").write_bytes(pki.ca.read_bytes())
    (creds / "mqtt-cert").write_bytes(pki.files["client_cert"].read_bytes())
    (creds / "mqtt-key").write_bytes(pki.files["client_key"].read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    tls = {"ca_credential": "mqtt-ca", "cert_credential": "mqtt-cert", "key_credential": "mqtt-key"}
    tel = make_telemetry("127.0.0.1", port, tmp_path, mqtt={"tls": tls})
    async with recorder(b.host, b.port, f"{ROOT}/status") as rec, running(tel):
        await rec.wait_for(lambda: any(m.json()["online"] for m in rec.messages))


async def test_tls_refused_without_client_certificate(
    tls_broker: tuple[Broker, Pki, int, int], tmp_path: Path
) -> None:
    _, pki, port, _ = tls_broker
    tel = make_telemetry("127.0.0.1", port, tmp_path, mqtt={"tls": {"ca_file": pki.ca}})
    async with running(tel):
        await _wait_state(lambda: tel.failures >= 2, timeout_s=15)
        assert tel.connects == 0 and tel.state != LinkState.CONNECTED


async def test_hostname_verification_on_by_default(
    tls_broker: tuple[Broker, Pki, int, int], tmp_path: Path
) -> None:
    b, pki, _, wrong_port = tls_broker
    tel = make_telemetry("127.0.0.1", wrong_port, tmp_path, mqtt={"tls": _tls(pki)})
    async with running(tel):
        await _wait_state(lambda: tel.failures >= 2, timeout_s=15)
        assert tel.connects == 0
    # The same listener is accepted once verification is turned off explicitly.
    tel2 = make_telemetry(
        "127.0.0.1", wrong_port, tmp_path / "2", mqtt={"tls": _tls(pki, verify_hostname=False)}
    )
    async with recorder(b.host, b.port, f"{ROOT}/status") as rec, running(tel2):
        await rec.wait_for(lambda: any(m.json()["online"] for m in rec.messages))
