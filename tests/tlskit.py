"""TLS for tests: self-signed certificates made on the spot, and a real `vfleet router` process
serving HTTPS (started from a YAML config or from flags), shared by the TLS tests; `TlsRouters`
starts the HTTPS replicas with a KEDA scaler that the peer tests (demand over HTTPS) share."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import start_ready

READY_TLS = re.compile(r"ready on https://([\d.]+):(\d+)")


@dataclass
class Pair:
    cert: bytes  # PEM
    key: bytes  # PEM

    @property
    def fingerprint(self) -> str:
        der = x509.load_pem_x509_certificate(self.cert).public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()


def make_pair(name: str) -> Pair:
    """A self-signed certificate for 127.0.0.1 (CN `name`) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([ip]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Pair(cert.public_bytes(pem), private)


def client_context(*trusted: Pair) -> ssl.SSLContext:
    return ssl.create_default_context(cadata="".join(p.cert.decode() for p in trusted))


def write_pair(folder: Path, name: str, pair: Pair) -> tuple[Path, Path]:
    """`pair` as NAME.crt and NAME.key in `folder`, the key readable by its owner only (as a
    router wants its key); (certificate path, key path)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(pair.cert)
    key.write_bytes(pair.key)
    key.chmod(0o600)
    return cert, key


def replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` as a certificate manager does: a new file renamed over the old."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class TlsRouter:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def served_fingerprint(self) -> str:
        """The SHA-256 of the certificate a new connection is shown (not verified here)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
        try:
            conn.connect()
            assert conn.sock is not None
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()
        finally:
            conn.close()


def start_tls_router(config: Path | None = None, args: Sequence[str] = ()) -> TlsRouter:
    """`vfleet router` serving HTTPS, once its `ready on https://` line is out (bounded):
    from a YAML `config` (which names host and port), or else on 127.0.0.1 and a free port;
    `args`: more flags (the TLS ones too, without a config)."""
    where = ["--config", str(config)] if config is not None else ["--host", "127.0.0.1"]
    if config is None:
        where += ["--port", "0"]
    cmd = [sys.executable, "-m", "vfleet", "router", *where, *args]
    sp = start_ready(cmd, "TLS router", ready=READY_TLS)
    return TlsRouter(sp.proc, sp.port, sp.log)


HELD_MODEL = "cold"  # known to the routers TlsRouters starts, served by no engine


@dataclass
class TlsRouters:
    """HTTPS routers in front of `backend` for the peer tests: each knows HELD_MODEL with no
    engine, so a request for it is held by the activator (demand a peer reports), and runs a
    KEDA scaler on a free port. Stopped together by `stop`."""

    folder: Path  # where each router's certificate, key and config are written
    backend: str
    started: list[TlsRouter] = field(default_factory=list)

    def start(self, name: str, pair: Pair, *args: str, **settings: Any) -> TlsRouter:
        """Router `name` serving `pair` (written as NAME.crt and NAME.key) from the YAML config
        NAME.yaml: 127.0.0.1 and a free port unless `settings` say otherwise; `settings` are
        more config keys (or replace these), `args` more flags (which override the config)."""
        cert, key = write_pair(self.folder, name, pair)
        config = {
            "backends": [self.backend],
            "models": [HELD_MODEL],
            "host": "127.0.0.1",
            "port": 0,
            "tls_cert": str(cert),
            "tls_key": str(key),
            "keda_port": 0,
            "hold_timeout_s": 60,  # longer than any test holds a request
            **settings,
        }
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        router = start_tls_router(path, args)
        self.started.append(router)
        return router

    def stop(self) -> None:
        for router in self.started:
            router.stop()


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str = "vfleet test CA") -> Ca:
    """A new CA (valid for a day, CN `name`) to issue leaves with."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Ca(key, cert)


def issue(ca: Ca, name: str, dns: Sequence[str] = ()) -> Pair:
    """A leaf for `dns` names and 127.0.0.1 (CN `name`) signed by `ca`, served as a chain file
    is: the leaf, then its issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [*map(x509.DNSName, dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Pair(leaf.public_bytes(pem) + ca.pem, private)
