"""deploy/make-test-certs.sh: its CA, broker and client certificates work with mosquitto's require_certificate and paho."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from inspector.config import TlsSettings, tls_errors
from tests.mqtt_helpers import MOSQUITTO, free_port, mosquitto

# How a refused TLS client ends: during the handshake (TLS 1.2), or dropped right after it (TLS 1.3).
REFUSED = ("handshake failed", "disconnected", "refused")
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "make-test-certs.sh"

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (apt-get install openssl)"),
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs mosquitto (apt-get install mosquitto)"),
]


def make_certs(out: Path, *args: str) -> Path:
    proc = subprocess.run([str(SCRIPT), str(out), *args], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls") / "certs")


@contextlib.contextmanager
def tls_broker(certs: Path, workdir: Path) -> Iterator[int]:
    """mosquitto with one TLS listener on loopback that requires a client certificate signed by the test CA."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'broker.crt'}\nkeyfile {certs / 'broker.key'}\n"
        "require_certificate true\nallow_anonymous true\nuser root\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
    )
    with mosquitto(conf, port):
        yield port


def connect(host: str, port: int, **tls: Any) -> str:
    """Connect an MQTT 5 client over TLS; 'connected', or what went wrong."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, reconnect_on_failure=False)
    client.tls_set(**{k: str(v) for k, v in tls.items()})
    done = threading.Event()
    outcome: list[str] = []

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.append("refused: " + str(reason) if reason.is_failure else "connected")
        done.set()

    def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.append(f"disconnected: {reason}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port, keepalive=5)
    except (ssl.SSLError, OSError) as exc:  # TLS 1.2 refuses during the handshake
        return f"handshake failed: {exc}"
    client.loop_start()  # TLS 1.3 completes the client's handshake; the broker's refusal arrives with the first read
    try:
        done.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] if outcome else "no CONNACK"


def test_script_writes_a_ca_and_two_certificates(certs: Path) -> None:
    for name in ("ca", "broker", "client"):
        assert (certs / f"{name}.crt").is_file()
        assert stat.S_IMODE((certs / f"{name}.key").stat().st_mode) == 0o600, name
    broker = ssl._ssl._test_decode_cert(str(certs / "broker.crt"))  # type: ignore[attr-defined]
    assert ("DNS", "localhost") in broker["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in broker["subjectAltName"]
    assert ((("commonName", "localhost"),),) == broker["subject"]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "broker.crt"), str(certs / "client.crt")],
        check=False, capture_output=True, text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_client_with_certificate_connects_over_tls(certs: Path, tmp_path: Path) -> None:
    with tls_broker(certs, tmp_path) as port:
        for host in ("localhost", "127.0.0.1"):  # both names are in the broker certificate; paho checks them
            assert connect(host, port, ca_certs=certs / "ca.crt", certfile=certs / "client.crt", keyfile=certs / "client.key") == "connected", host


def test_client_without_certificate_is_refused(certs: Path, tmp_path: Path) -> None:
    with tls_broker(certs, tmp_path) as port:
        outcome = connect("127.0.0.1", port, ca_certs=certs / "ca.crt")
        assert outcome.startswith(REFUSED), outcome
        # And the broker still serves a client that has one.
        assert connect("127.0.0.1", port, ca_certs=certs / "ca.crt", certfile=certs / "client.crt", keyfile=certs / "client.key") == "connected"


def test_certificate_from_another_ca_is_refused(certs: Path, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")
    with tls_broker(certs, tmp_path) as port:
        outcome = connect("127.0.0.1", port, ca_certs=certs / "ca.crt", certfile=other / "client.crt", keyfile=other / "client.key")
        assert outcome.startswith(REFUSED), outcome
        # Nor does a client trust a broker whose certificate its CA did not sign.
        assert connect("127.0.0.1", port, ca_certs=other / "ca.crt", certfile=other / "client.crt", keyfile=other / "client.key").startswith(
            "handshake failed"
        )


def test_second_run_adds_a_client_to_the_same_ca(tmp_path: Path) -> None:
    out = make_certs(tmp_path / "certs")
    ca, broker = (out / "ca.crt").read_bytes(), (out / "broker.crt").read_bytes()
    make_certs(out, "plc1")
    assert (out / "ca.crt").read_bytes() == ca and (out / "broker.crt").read_bytes() == broker
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "plc1.crt")], check=False, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_config_check_run_loads_the_tls_files_as_the_link_will(certs: Path, tmp_path: Path) -> None:
    def errors(**files: Path) -> list[str]:
        return tls_errors(TlsSettings(enabled=True, **files))

    good = {"ca_file": certs / "ca.crt", "cert_file": certs / "client.crt", "key_file": certs / "client.key"}
    assert errors(**good) == []
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert errors(**{**good, "ca_file": garbage}) == [
        f"mqtt.tls.ca_file: not usable as PEM CA certificates: NO_CERTIFICATE_OR_CRL_FOUND: {garbage}"
    ]
    assert errors(**{**good, "key_file": certs / "broker.key"}) == [
        f"mqtt.tls.key_file: not the private key of cert_file {certs / 'client.crt'}: {certs / 'broker.key'}"
    ]
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(certs / "client.key"), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
                   check=True, capture_output=True)
    assert errors(**{**good, "key_file": encrypted})[0].startswith("mqtt.tls.key_file: the key is encrypted")
