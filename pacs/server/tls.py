"""TLS for DIMSE (PS3.15 Annex B.9, the BCP 195 profile) and HTTPS.

The DICOM TLS port accepts connections itself and hands each socket to
``loop.connect_accepted_socket(ssl=...)``, which gives the same ``DicomProtocol`` as the plain
port once the handshake has succeeded. Accepting ourselves, rather than passing ``ssl=`` to
``create_server``, is what lets a failed handshake (a plain DICOM client on the TLS port, an
untrusted client certificate) end as one log line: asyncio and uvloop drop such errors silently
outside debug mode.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacs.config import Settings
from pacs.errors import ConfigError

log = logging.getLogger("pacs.tls")

# BCP 195 (RFC 9325 4.2): forward secrecy and AEAD only for TLS 1.2; TLS 1.3's suites are all
# AEAD and are not affected by this string.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


class _EncryptedKey(Exception):
    """Raised by the password callback: we never prompt for a passphrase."""


def _no_password() -> bytes:
    raise _EncryptedKey


def _server_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2 or later, BCP 195 ciphers, our certificate chain and key."""
    cert, key = settings.tls_cert, settings.tls_key
    if not cert or not key:
        raise ConfigError("tls_cert, tls_key: both are needed by tls_port / http_tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_NO_RENEGOTIATION)
    _load_chain(context, cert, key)
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Our certificate chain and its key into ``context``; ConfigError saying what is wrong."""
    if "-----BEGIN CERTIFICATE-----" not in _read(cert, "tls_cert"):
        raise ConfigError(f"tls_cert: {cert} holds no PEM certificate")
    if "PRIVATE KEY-----" not in _read(key, "tls_key"):
        raise ConfigError(f"tls_key: {key} holds no PEM private key")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"tls_key: {key} is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"tls_key: {key} is not the private key of tls_cert {cert}") \
                from None
        raise ConfigError(f"tls_cert, tls_key: cannot load {cert} with {key}: "
                          f"{tls_reason(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"tls_cert, tls_key: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    """The CA bundle ``tls_ca`` as the certificates ``context`` trusts."""
    if "-----BEGIN CERTIFICATE-----" not in _read(ca, "tls_ca"):
        raise ConfigError(f"tls_ca: {ca} holds no PEM certificate")
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls_ca: cannot load {ca}: {tls_reason(exc)}") from None


def _read(path: str, name: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def dimse_server_context(settings: Settings) -> ssl.SSLContext:
    """The DICOM TLS listener's context: with ``tls_ca`` a client certificate signed by it is
    required (the peer authentication of PS3.15 B.1); without, none is asked for."""
    context = _server_context(settings)
    if settings.tls_ca:
        _load_ca(context, settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context of our associations to a ``[remote.AET]`` with ``tls = true`` (C-MOVE,
    forwarding, commitment reports, REST echo and store): TLS 1.2 or later, BCP 195 ciphers;
    the peer's certificate must be signed by ``tls_ca`` (else a CA the system trusts) and
    name the remote's host; ours (``tls_cert``, ``tls_key``) is presented when set, as peers
    that authenticate their clients require. Loaded once per process."""
    key = (settings.tls_cert, settings.tls_key, settings.tls_ca)
    context = _CLIENT_CONTEXTS.get(key)
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and host name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(BCP195_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        if settings.tls_ca:
            _load_ca(context, settings.tls_ca)
        else:
            context.load_default_certs()
        if settings.tls_cert or settings.tls_key:
            if not settings.tls_cert or not settings.tls_key:
                raise ConfigError("tls_cert, tls_key: both, or neither, for TLS to remote AEs")
            _load_chain(context, settings.tls_cert, settings.tls_key)
        _CLIENT_CONTEXTS[key] = context
    return context


_CLIENT_CONTEXTS: dict[tuple[str, str, str], ssl.SSLContext] = {}


def https_server_context(settings: Settings) -> ssl.SSLContext:
    """The HTTPS listener's context: same certificate and key, no client certificate (HTTP
    users authenticate with passwords and tokens)."""
    context = _server_context(settings)
    context.verify_mode = ssl.CERT_NONE
    return context


def check_tls_settings(settings: Settings) -> None:
    """Load what the settings enable, once, before any worker starts: a bad certificate or key
    stops ``pacs serve`` with one line instead of failing in every worker."""
    if settings.tls_port:
        dimse_server_context(settings)
    if settings.http_tls:
        https_server_context(settings)
    if any(remote.tls for remote in settings.remotes.values()):
        client_context(settings)


def tls_reason(exc: BaseException) -> str:
    """What went wrong in a TLS error, in a few words (the certificate check's own)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason or 'certificate verify failed'}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class TlsListener:
    """The DICOM TLS port: accepts TCP, handshakes, then runs ``protocol_factory()``'s protocol
    on the TLS transport exactly as the plain port would on a TCP one."""

    def __init__(
        self,
        context: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout: float,
    ) -> None:
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.sockets: list[socket.socket] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._unowned: set[socket.socket] = set()  # accepted; its task has not started yet

    async def start(self, host: str, port: int, reuse_port: bool) -> None:
        """Bind and listen on every address of ``host`` (SO_REUSEPORT: workers share it)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while attempting to bind on address "
                                             f"{address!r}: {exc.strerror}") from None
                sock.listen(1024)
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop accepting; connections still handshaking are dropped."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._handshakes):
            task.cancel()
        for conn in self._unowned:  # a task cancelled before its start never runs its body
            conn.close()
        self._unowned.clear()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100):  # then let other callbacks run; the reader fires again
            try:
                conn, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors (EMFILE) and the like: pause a second, as asyncio does,
                # instead of spinning on a socket that stays readable.
                log.warning("TLS port: cannot accept: %s", exc)
                loop.remove_reader(listening.fileno())
                loop.call_later(1.0, self._resume_accepting, listening)
                return
            conn.setblocking(False)
            self._unowned.add(conn)
            task = loop.create_task(self._handshake(conn, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume_accepting(self, listening: socket.socket) -> None:
        if listening.fileno() >= 0:
            asyncio.get_running_loop().add_reader(listening.fileno(), self._accept, listening)

    async def _handshake(self, conn: socket.socket, address: Any) -> None:
        self._unowned.discard(conn)
        loop = asyncio.get_running_loop()
        peer = f"{address[0]}:{address[1]}"
        # The loop owns the socket from here on (it closes it with the transport) and calls
        # the protocol's connection_made only once the handshake has succeeded.
        try:
            transport, _protocol = await loop.connect_accepted_socket(
                self.protocol_factory, conn, ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
                ssl_shutdown_timeout=self.handshake_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ssl.SSLError, ConnectionError, TimeoutError: the peer's
            log.warning("%s: TLS handshake failed: %s", peer, _handshake_failure(exc))
            return
        ssl_object = transport.get_extra_info("ssl_object")
        log.info("%s: TLS %s %s, %s", peer, ssl_object.version() if ssl_object else "?",
                 (transport.get_extra_info("cipher") or ("?",))[0],
                 _subject(transport.get_extra_info("peercert")))


_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                      "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
        return f"not TLS, a plain connection? ({exc.reason})"
    return tls_reason(exc)


def _subject(cert: dict[str, Any] | None) -> str:
    if not cert:
        return "no client certificate"
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    return f"client certificate CN={names[0] if names else '?'}"
