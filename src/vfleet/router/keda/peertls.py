"""How a router verifies its peer routers when it asks them for demand over HTTPS.

A router that serves TLS has peers that serve TLS too (the replicas of one Deployment, one
Secret), so it asks them over HTTPS, and what it trusts is explicit:

- `--peer-ca FILE`: a CA bundle. The peer's chain must end in it, and the peer's certificate
  must name `--peer-tls-name` (sent as SNI), else the host in the peer's URL. A CA vouches for
  every certificate it signed, so its name is what singles out the routers' own; peers found in
  Kubernetes are pod IPs, which certificates rarely name, hence `--peer-tls-name`.
- no `--peer-ca`, and the router has `--tls-cert`: exactly the first certificate of that file
  (the one this router serves, which its replicas share) is trusted, as its own anchor, with no
  name check: only a holder of that certificate's private key can present it. Its issuers are
  deliberately not trusted (a public intermediate would admit any site it signed).
- neither: the system's trust store and the URL's host, as any HTTPS client.

The trusted file is re-read when it changes (a renewed certificate, a rotated bundle); a file
that no longer loads keeps the previous context, with one warning per change.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from vfleet.router import filestamp

log = logging.getLogger("vfleet.router.keda")

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"


class PeerTlsError(ValueError):
    """The file peers are verified against cannot be read or holds no certificate."""


def first_certificate(pem: str, what: str) -> str:
    """The first PEM certificate block of `pem` (a chain file: the leaf)."""
    start = pem.find(PEM_BEGIN)
    end = pem.find(PEM_END, start)
    if start < 0 or end < 0:
        raise PeerTlsError(f"{what}: no PEM certificate in it")
    return pem[start : end + len(PEM_END)] + "\n"


def client_context(ca: str | None, own_cert: str | None) -> ssl.SSLContext:
    """The client context for peers (see the module docstring for which anchor is used)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    path = ca or own_cert
    if path is None:
        ctx.load_default_certs()
        ctx.check_hostname = True
        return ctx
    try:
        with open(path, encoding="ascii") as f:
            pem = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PeerTlsError(f"peer TLS trust file {path}: {why}") from None
    try:
        if ca is not None:
            ctx.load_verify_locations(cadata=pem)
            ctx.check_hostname = True
        else:
            # The leaf alone is the anchor: PARTIAL_CHAIN lets a trusted certificate that is
            # not a self-signed root end the chain.
            ctx.load_verify_locations(cadata=first_certificate(pem, path))
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.check_hostname = False
    except ssl.SSLError as exc:
        raise PeerTlsError(f"peer TLS trust file {path}: {exc.reason or exc}") from None
    return ctx


@dataclass(slots=True)
class PeerTls:
    """The peers' client context, rebuilt when the trusted file changes on disk."""

    ca: str | None = None  # --peer-ca
    own_cert: str | None = None  # --tls-cert: pinned when there is no --peer-ca
    name: str | None = None  # --peer-tls-name
    _ctx: ssl.SSLContext | None = None
    _stamp: tuple[int, int, int] | None = field(default=None)

    @property
    def path(self) -> str | None:
        return self.ca or self.own_cert

    @property
    def pinned(self) -> bool:
        return self.ca is None and self.own_cert is not None

    def server_name(self, host: str) -> str:
        """The name sent (SNI) and, unless pinned, checked in the peer's certificate."""
        return self.name or host

    def context(self) -> ssl.SSLContext:
        """The current context; the first call raises PeerTlsError for an unusable file."""
        path = self.path
        if self._ctx is not None and path is not None:
            try:
                stamp: tuple[int, int, int] | None = filestamp.stamp(path)
            except OSError:
                return self._ctx  # replaced by a rename caught half way; the next call sees it
            if stamp == self._stamp:
                return self._ctx
            self._stamp = stamp  # one warning per change, not per request
            try:
                self._ctx = client_context(self.ca, self.own_cert)
                log.warning("peer TLS trust reloaded from %s", path)
            except PeerTlsError as exc:
                log.warning("peer TLS reload failed, keeping the previous trust: %s", exc)
            return self._ctx
        if self._ctx is None:
            self._ctx = client_context(self.ca, self.own_cert)
            try:
                self._stamp = filestamp.stamp(path) if path is not None else None
            except OSError:
                self._stamp = None  # gone right after it was read: the next call re-reads it
        return self._ctx
