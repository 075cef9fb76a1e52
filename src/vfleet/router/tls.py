"""TLS on the router's listening port: the server context, and its reload when the files change.

The listening server keeps the context it was created with for its whole life, so a renewed
certificate cannot be swapped into it. Instead that first context carries a server-name callback
(OpenSSL calls it for every handshake, whether or not the client sent SNI) that moves each new
connection onto the newest context. A reload builds and checks a whole new context first: a
certificate renewed before its key (a half-finished rotation) fails to load and the old pair
keeps serving until both files agree.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from vfleet.router.filestamp import stamp

log = logging.getLogger("vfleet.router.tls")

Stamp = tuple[tuple[int, int, int], ...]


class TlsError(ValueError):
    """The certificate or key cannot be read or does not load (found before serving)."""


def load_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the PEM certificate chain `cert` and private key `key`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the only protocol the router speaks
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(f"TLS certificate {cert} with key {key}: {exc.reason or exc}") from exc
    except OSError as exc:
        raise TlsError(f"TLS files {cert}, {key}: {exc.strerror or exc}") from exc
    return ctx


def _stamp(paths: tuple[str, ...]) -> Stamp:
    return tuple(stamp(path) for path in paths)


class CertReloader:
    """`server` is the context to listen with; `check()` (or `run()`, every interval) reloads
    the pair when either file's stat changes, so connections made afterwards get it."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.server = load_context(cert, key)
        self.server.sni_callback = self._pick
        self.current = self.server
        self.stamp = _stamp((cert, key))
        self.reloads = 0

    def _pick(
        self, conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not ctx:
            conn.context = current

    def check(self) -> bool:
        """Reload if the files changed and the new pair loads; True when reloaded."""
        try:
            stamp = _stamp((self.cert, self.key))
        except OSError:
            return False  # replaced by a rename caught half way; the next check sees it
        if stamp == self.stamp:
            return False
        # Remember the stamp even when the load fails: one warning per change, not per check;
        # the write that completes the rotation changes the stamp again.
        self.stamp = stamp
        try:
            ctx = load_context(self.cert, self.key)
        except TlsError as exc:
            log.warning("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        self.current = ctx
        self.reloads += 1
        log.warning("TLS certificate reloaded from %s", self.cert)
        return True

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()
