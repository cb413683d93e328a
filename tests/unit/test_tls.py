"""TLS contexts (BCP 195 profile, client certificates, one-line errors) and the TLS listener's
handshake-then-hand-over, on both event loops, with real TLS clients."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop
from cryptography.hazmat.primitives import serialization

from pacs.config import Settings
from pacs.errors import ConfigError
from pacs.server.tls import (
    TlsListener,
    check_tls_settings,
    dimse_server_context,
    https_server_context,
)


@dataclasses.dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client: trustme.LeafCert
    trustme_ca: trustme.CA
    other_client: trustme.LeafCert  # signed by a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp / "server.key"))
    return Pki(tmp / "ca.pem", tmp / "server.pem", tmp / "server.key",
               ca.issue_cert("modality@example.org", common_name="MODALITY"), ca,
               other.issue_cert("intruder@example.org", common_name="INTRUDER"))


def settings(pki: Pki, **changes: Any) -> Settings:
    values: dict[str, Any] = {"tls_port": 2762, "tls_cert": str(pki.cert),
                              "tls_key": str(pki.key), "tls_ca": str(pki.ca)}
    values.update(changes)
    return dataclasses.replace(Settings(), **values)


def test_bcp195_profile(pki: Pki) -> None:
    for context in (dimse_server_context(settings(pki)), https_server_context(settings(pki))):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for cipher in tls12:  # forward secrecy and AEAD only
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
            assert cipher["aead"], cipher["name"]


def test_client_certificates_required_only_with_a_ca(pki: Pki) -> None:
    assert dimse_server_context(settings(pki)).verify_mode == ssl.CERT_REQUIRED
    assert dimse_server_context(settings(pki, tls_ca="")).verify_mode == ssl.CERT_NONE
    assert https_server_context(settings(pki)).verify_mode == ssl.CERT_NONE


def one_line_error(action: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_pem_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert one_line_error(lambda: dimse_server_context(settings(pki, tls_cert=str(garbage)))
                          ).startswith("tls_cert:")
    assert one_line_error(lambda: dimse_server_context(settings(pki, tls_key=str(garbage)))
                          ).startswith("tls_key:")
    assert one_line_error(lambda: dimse_server_context(settings(pki, tls_ca=str(garbage)))
                          ).startswith("tls_ca:")
    # A PEM header over a damaged body.
    broken = tmp_path / "broken.pem"
    broken.write_text(pki.cert.read_text().replace("M", "!", 5))
    assert "cannot load" in one_line_error(
        lambda: https_server_context(settings(pki, tls_cert=str(broken))))
    missing = str(tmp_path / "missing.pem")
    assert missing in one_line_error(lambda: https_server_context(settings(pki, tls_key=missing)))


def test_mismatched_and_encrypted_keys(pki: Pki, tmp_path: Path) -> None:
    other_key = tmp_path / "other.key"
    pki.other_client.private_key_pem.write_to_path(str(other_key))
    message = one_line_error(lambda: check_tls_settings(settings(pki, tls_key=str(other_key))))
    assert message == f"tls_key: {other_key} is not the private key of tls_cert {pki.cert}"
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert "encrypted" in one_line_error(
        lambda: check_tls_settings(settings(pki, tls_key=str(encrypted))))


def test_check_loads_only_what_is_enabled(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("junk\n")
    check_tls_settings(settings(pki, tls_port=0, tls_cert=str(garbage)))  # nothing enabled
    with pytest.raises(ConfigError):
        check_tls_settings(settings(pki, tls_port=0, http_tls=True, tls_cert=str(garbage)))


# --- the listener, on a real loop --------------------------------------------------------------


class Echo(asyncio.BufferedProtocol):
    """Echoes what it receives; records that connection_made came first."""

    def __init__(self) -> None:
        self.buffer = bytearray(7)  # small: the replay of early data must loop
        self.transport: asyncio.Transport | None = None
        self.order_ok = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None:
            self.order_ok = False
            return
        self.transport.write(bytes(self.buffer[:nbytes]))


LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop_name", LOOPS)
def test_listener_hands_over_and_logs_failed_handshakes(
    pki: Pki, loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = ssl.create_default_context(cafile=str(pki.ca))
    pki.client.configure_cert(client)
    intruder = ssl.create_default_context(cafile=str(pki.ca))
    pki.other_client.configure_cert(intruder)
    loop_errors: list[dict[str, Any]] = []
    protocols: list[Echo] = []

    def factory() -> Echo:
        protocols.append(Echo())
        return protocols[-1]

    async def talk(context: ssl.SSLContext | None, port: int, payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None)
        try:
            writer.write(payload)
            return await reader.readexactly(len(payload))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        listener = TlsListener(dimse_server_context(settings(pki)), factory, 5.0)
        await listener.start("127.0.0.1", 0, False)
        port = listener.sockets[0].getsockname()[1]
        try:
            payload = bytes(range(256)) * 40
            assert await talk(client, port, payload) == payload
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
                await talk(None, port, b"\x01\x00\x00\x00\x00\x44" + bytes(68))  # A-ASSOCIATE-RQ
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
                await talk(intruder, port, b"hello")
            assert await talk(client, port, b"still serving") == b"still serving"
        finally:
            listener.close()
            await listener.wait_closed()

    with caplog.at_level(logging.INFO, logger="pacs.tls"):
        LOOPS[loop_name](scenario())
    # The factory runs at accept time; connection_made only after a successful handshake.
    connected = [p for p in protocols if p.transport is not None]
    assert len(protocols) == 4 and len(connected) == 2
    assert all(p.order_ok for p in protocols)
    failures = [r.getMessage() for r in caplog.records if "handshake failed" in r.getMessage()]
    assert len(failures) == 2, failures
    assert "not TLS" in failures[0]
    assert "certificate" in failures[1].lower() or "CA" in failures[1]
    assert any("client certificate CN=MODALITY" in r.getMessage() for r in caplog.records)
    assert loop_errors == []


def test_silent_peer_is_dropped_after_the_handshake_timeout(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> bytes:
        listener = TlsListener(dimse_server_context(settings(pki)), Echo, 0.2)
        await listener.start("127.0.0.1", 0, False)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", listener.sockets[0].getsockname()[1])
            try:
                return await asyncio.wait_for(reader.read(), 30)  # EOF once we are dropped
            finally:
                writer.close()
                await writer.wait_closed()
        finally:
            listener.close()
            await listener.wait_closed()

    with caplog.at_level(logging.INFO, logger="pacs.tls"):
        assert uvloop.run(scenario()) == b""
    assert any("TLS handshake failed" in r.getMessage() and "longer than" in r.getMessage()
               for r in caplog.records)


def test_workers_share_the_port(pki: Pki) -> None:
    async def scenario() -> None:
        first = TlsListener(dimse_server_context(settings(pki)), Echo, 5.0)
        second = TlsListener(dimse_server_context(settings(pki)), Echo, 5.0)
        await first.start("127.0.0.1", 0, True)
        try:
            port = first.sockets[0].getsockname()[1]
            await second.start("127.0.0.1", port, True)
            assert second.sockets[0].getsockname()[1] == port
            third = TlsListener(dimse_server_context(settings(pki)), Echo, 5.0)
            with pytest.raises(OSError, match="error while attempting to bind"):
                await third.start("127.0.0.1", port, False)  # without SO_REUSEPORT: in use
            assert all(sock.fileno() == -1 for sock in third.sockets)
        finally:
            first.close()
            second.close()

    uvloop.run(scenario())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_drops_connections_still_handshaking(pki: Pki, loop_name: str) -> None:
    async def scenario() -> None:
        listener = TlsListener(dimse_server_context(settings(pki)), Echo, 30.0)
        await listener.start("127.0.0.1", 0, False)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.sockets[0].getsockname()[1])
        try:
            while not listener._handshakes:  # accepted, handshake pending
                await asyncio.sleep(0.01)
            listener.close()
            await asyncio.wait_for(listener.wait_closed(), 30)
            assert not listener._handshakes
            try:
                assert await asyncio.wait_for(reader.read(), 30) == b""
            except ConnectionResetError:
                pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    LOOPS[loop_name](scenario())
