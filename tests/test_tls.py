"""TLS on the client port and between nodes, with certificates made here (trustme).

Real nodes on loopback, real handshakes: a client must verify the node against the CA, a
peer whose certificate another CA signed (or that expired) is refused, plaintext to a
TLS port is closed without a traceback in the node's log, and a TLS cluster replicates.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from kvs import cli
from kvs.client import AsyncClient, Client, Unavailable
from kvs.cluster.swim.membership import PING_PATH
from kvs.cluster.transport import TransportError
from kvs.config import load
from kvs.errors import ConfigError
from kvs.node import Node
from kvs.tls import node_tls
from tests.cluster import converged, start_cluster
from tests.conftest import NodeFactory, node_config

LOOPBACK = ("127.0.0.1", "localhost")


class Pki:
    """A CA and the PEM files of certificates it issued, under one directory."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.ca = trustme.CA()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.name = name

    def issue(self, label: str, **validity: datetime.datetime) -> trustme.LeafCert:
        return self.ca.issue_cert(*LOOPBACK, common_name=label, **validity)

    def files(self, cert: trustme.LeafCert, label: str) -> tuple[Path, Path]:
        cert_file = self.directory / f"{self.name}-{label}.pem"
        key_file = self.directory / f"{self.name}-{label}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return cert_file, key_file

    def settings(self, label: str, ca_file: Path | None = None) -> dict[str, Any]:
        """A node's TLS settings with a new certificate from this CA."""
        cert_file, key_file = self.files(self.issue(label), label)
        return {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file),
                "tls_ca_file": str(ca_file or self.ca_file)}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def _client_context(pki: Pki, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def test_a_client_must_verify_the_node_against_the_ca(make_node: NodeFactory, pki: Pki) -> None:
    node = await make_node(**pki.settings("n1"))
    assert node.url.startswith("https://")
    refused = r"certificate verify failed.*give the CA"
    with Client(node.url) as kv, pytest.raises(Unavailable, match=refused):  # not a system CA
        await asyncio.to_thread(kv.put, "k", 1)
    async with AsyncClient(node.url) as akv:
        with pytest.raises(Unavailable, match=refused):
            await akv.get("k")
    with Client(node.url, ca=str(pki.ca_file)) as kv:
        await asyncio.to_thread(kv.put, "k", 1)
    async with AsyncClient(node.url, ca=str(pki.ca_file)) as akv:
        assert (await akv.get("k")).value == 1


async def test_plaintext_to_a_tls_port_is_closed_cleanly(
        make_node: NodeFactory, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    node = await make_node(**pki.settings("n1"))
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    try:
        reply = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        reply = b""
    writer.close()
    assert not reply.startswith(b"HTTP/"), reply  # no answer in clear, just a closed connection
    with Client(f"http://127.0.0.1:{node.port}") as kv, pytest.raises(Unavailable):
        await asyncio.to_thread(kv.get, "k")
    with Client(node.url, ca=str(pki.ca_file)) as kv:  # the node still serves TLS clients
        assert (await asyncio.to_thread(kv.health)).status == "ok"
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_a_peer_certificate_from_another_ca_is_refused(
        make_node: NodeFactory, pki: Pki, tmp_path: Path) -> None:
    """The stranger trusts our CA (so only our refusal can stop it) but its certificate
    comes from another CA: its calls fail at the handshake and it never joins."""
    first = await make_node(**pki.settings("a"))
    other = Pki(tmp_path / "other", "other")
    bundle = tmp_path / "both.pem"
    bundle.write_bytes(pki.ca_file.read_bytes() + other.ca_file.read_bytes())
    stranger = await make_node(seed_nodes=[first.address], **other.settings("b", ca_file=bundle))
    payload = {"target": first.engine.node_id}
    with pytest.raises(TransportError, match="may have refused this node's certificate"):
        await stranger.transport.call(first.address, PING_PATH, payload, timeout=5)
    assert stranger.membership.alive_peers() == [] and first.membership.alive_peers() == []
    assert first.membership.member(stranger.engine.node_id) is None


async def test_internal_routes_need_a_peer_certificate_clients_do_not(
        make_node: NodeFactory, pki: Pki, http: aiohttp.ClientSession) -> None:
    """One port for clients and peers: a client without a certificate uses /kv/ but gets
    401 on /internal/; a CA-signed client certificate passes (the handler then judges the body)."""
    node = await make_node(**pki.settings("n1"))
    plain = _client_context(pki)
    async with http.put(f"{node.url}/kv/k", json={"value": 1}, ssl=plain) as resp:
        assert resp.status == 200
    async with http.post(node.url + PING_PATH, json={}, ssl=plain) as resp:
        assert resp.status == 401
        assert (await resp.json())["cause"] == "peer_certificate_required"
    peer = _client_context(pki, pki.issue("peer"))
    async with http.post(node.url + PING_PATH, json={}, ssl=peer) as resp:
        assert resp.status == 400  # past the certificate check: a ping without a target


async def test_an_expired_certificate_is_refused(
        make_node: NodeFactory, pki: Pki, http: aiohttp.ClientSession) -> None:
    node = await make_node(**pki.settings("n1"))
    now = datetime.datetime.now(datetime.UTC)
    expired = pki.issue("old", not_before=now - datetime.timedelta(days=30),
                        not_after=now - datetime.timedelta(days=1))
    with pytest.raises(aiohttp.ClientError):  # the handshake fails: the node refuses it
        async with http.post(node.url + PING_PATH, json={},
                             ssl=_client_context(pki, expired)) as resp:
            await resp.read()
    # A node is not even started with one: it could talk to nobody.
    cert_file, key_file = pki.files(expired, "old")
    config = node_config(port=0, data_dir=str(pki.directory / "old"), tls_cert_file=str(cert_file),
                         tls_key_file=str(key_file), tls_ca_file=str(pki.ca_file))
    with pytest.raises(ConfigError, match=r"valid from .* UTC, not now"):
        await Node(config).start()


async def test_a_tls_cluster_replicates(make_node: NodeFactory, pki: Pki) -> None:
    """Three nodes, mutual TLS and the HMAC secret: a write on one reaches every node."""
    labels = iter(["a", "b", "c"])
    nodes = await start_cluster(_Labelled(make_node, pki, labels), 3, cluster_secret="s3cret")
    with Client(nodes[0].url, ca=str(pki.ca_file)) as kv:
        await asyncio.to_thread(kv.put, "k", {"v": 1})
    await converged(nodes)
    assert all(node.engine.get("k") is not None for node in nodes)


class _Labelled:
    """A NodeFactory giving each node its own certificate."""

    def __init__(self, make_node: NodeFactory, pki: Pki, labels: Any) -> None:
        self.make_node, self.pki, self.labels = make_node, pki, labels

    async def __call__(self, **overrides: Any) -> Node:
        return await self.make_node(**self.pki.settings(next(self.labels)), **overrides)


async def test_the_cli_talks_https_with_ca(make_node: NodeFactory, pki: Pki) -> None:
    """`--ca` on the client commands, the signed DELETE of `members remove` and `leave`."""
    node = await make_node(**pki.settings("n1"))
    ca = ["--node", node.url, "--ca", str(pki.ca_file)]
    assert await asyncio.to_thread(cli.main, ["put", "k", "1", *ca]) == 0
    assert await asyncio.to_thread(cli.main, ["get", "k", "--node", node.url]) == cli.EXIT_UNAVAILABLE
    assert await asyncio.to_thread(cli.main, ["members", "remove", "nobody", *ca]) == cli.EXIT_NOT_FOUND
    assert await asyncio.to_thread(cli.main, ["leave", *ca]) == 0
    assert node.left.is_set()


def test_kvs_ca_in_the_environment_is_not_a_node_setting() -> None:
    """A shell that exports KVS_CA for the CLI can still run `kvs serve`."""
    assert load(environ={"KVS_CA": "/etc/kvs/ca.pem"}).tls_ca_file is None


def _files(pki: Pki, label: str) -> tuple[str, str]:
    cert_file, key_file = pki.files(pki.issue(label), label)
    return str(cert_file), str(key_file)


@pytest.mark.parametrize("case, message", [
    ("cert_only", "tls_cert_file and tls_key_file go together"),
    ("ca_only", "tls_ca_file is set but tls_cert_file and tls_key_file are not"),
    ("verify_without_ca", "tls_verify_peer needs tls_ca_file"),
    ("missing_cert", "tls_cert_file /nonexistent/cert.pem: No such file or directory"),
    ("not_pem", "not a PEM certificate"),
    ("other_key", "is not the key of tls_cert_file"),
    ("encrypted_key", "the key is encrypted"),
    ("bad_ca", "no PEM certificate in it"),
])
def test_bad_tls_settings_are_named_at_start_up(pki: Pki, case: str, message: str) -> None:
    cert, key = _files(pki, "n1")
    _, other_key = _files(pki, "n2")
    junk = pki.directory / "junk.pem"
    junk.write_text("not a certificate\n")
    encrypted = pki.directory / "encrypted-key.pem"
    _encrypt(Path(key), encrypted)
    settings: dict[str, Any] = {
        "cert_only": {"tls_cert_file": cert},
        "ca_only": {"tls_ca_file": str(pki.ca_file)},
        "verify_without_ca": {"tls_cert_file": cert, "tls_key_file": key, "tls_verify_peer": True},
        "missing_cert": {"tls_cert_file": "/nonexistent/cert.pem", "tls_key_file": key},
        "not_pem": {"tls_cert_file": str(junk), "tls_key_file": key},
        "other_key": {"tls_cert_file": cert, "tls_key_file": other_key},
        "encrypted_key": {"tls_cert_file": cert, "tls_key_file": str(encrypted)},
        "bad_ca": {"tls_cert_file": cert, "tls_key_file": key, "tls_ca_file": str(junk)},
    }[case]
    with pytest.raises(ConfigError, match=message):
        node_tls(node_config(**settings))


def test_verify_peer_defaults_to_on_with_a_ca(pki: Pki) -> None:
    cert, key = _files(pki, "n1")
    with_ca = node_tls(node_config(tls_cert_file=cert, tls_key_file=key, tls_ca_file=str(pki.ca_file)))
    without = node_tls(node_config(tls_cert_file=cert, tls_key_file=key))
    turned_off = node_tls(node_config(tls_cert_file=cert, tls_key_file=key,
                                      tls_ca_file=str(pki.ca_file), tls_verify_peer="false"))
    assert with_ca and with_ca.verify_peer and with_ca.server.verify_mode == ssl.CERT_OPTIONAL
    assert without and not without.verify_peer and without.server.verify_mode == ssl.CERT_NONE
    assert turned_off and not turned_off.verify_peer


def _encrypt(key_file: Path, into: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    into.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")))


def test_bad_tls_settings_stop_the_node_before_it_touches_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    config = node_config(port=0, data_dir=str(data_dir), tls_cert_file="/nonexistent.pem",
                         tls_key_file="/nonexistent-key.pem")
    with pytest.raises(ConfigError, match=r"tls_cert_file /nonexistent\.pem: No such file"):
        asyncio.run(Node(config).start())
    assert not data_dir.exists()
