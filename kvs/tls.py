"""TLS contexts built from the settings, after checking the files they name.

    node's port (server)            ssl=server  ◄── clients: verify the node against the CA
    ───────────────────                          ◄── peers:   verify it, and present their own
    CERT_OPTIONAL: a certificate                     certificate (mutual TLS)
    offered must verify against tls_ca_file;
    /internal/ refuses requests without one (tls_verify_peer; kvs/http/server.py)

One port serves clients and peers, so the server asks for a client certificate rather
than requiring one: `curl --cacert ca.pem` works on every client route, while a peer's
certificate from another CA (or an expired one) fails the handshake, and an /internal/
request without a certificate is answered 401. A node dialling a peer verifies the peer's
certificate against tls_ca_file (the system's CAs when unset) and its name against the
address dialled, and presents its own certificate.

`node_tls` checks the files first, so that a wrong path, a key that belongs to another
certificate, an encrypted key or an expired certificate stops the node at start-up with
one line naming the setting (ConfigError), not with an OpenSSL "PEM lib" or a node that
can start but never talk to anyone.

`client_context` is all the clients need (stdlib only); `cryptography`, for reading a
certificate, is imported only by `node_tls`.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvs.errors import ConfigError

if TYPE_CHECKING:
    from kvs.config import Config

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class NodeTls:
    """What a node with TLS uses: `server` on its port, `peer` to dial its peers, and whether
    /internal/ requires a client certificate (`verify_peer`)."""

    server: ssl.SSLContext
    peer: ssl.SSLContext
    verify_peer: bool


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client's context: verify the node's certificate and name against `ca_file` (PEM), or
    against the system's CAs when None."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"CA file {ca_file}: {_why(exc)}; give a PEM file with the CA certificate "
                          "that signed the node's certificate") from None


def node_tls(config: Config) -> NodeTls | None:
    """The node's contexts, or None without tls_cert_file; ConfigError names what is wrong."""
    cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_ca_file
    if cert is None and key is None:
        if ca is not None or config.tls_verify_peer is not None:
            which = "tls_ca_file" if ca is not None else "tls_verify_peer"
            raise ConfigError(f"{which} is set but tls_cert_file and tls_key_file are not: TLS "
                              "needs this node's certificate and key")
        return None
    if cert is None or key is None:
        raise ConfigError("tls_cert_file and tls_key_file go together: set both, or neither")
    verify_peer = ca is not None if config.tls_verify_peer is None else config.tls_verify_peer
    if verify_peer and ca is None:
        raise ConfigError("tls_verify_peer needs tls_ca_file: the CA that must have signed the "
                          "certificates peers present")
    check_files(cert, key, ca)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    peer = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer's certificate and name
    for context in (server, peer):
        context.minimum_version = MINIMUM_VERSION
        context.load_cert_chain(cert, key)
    if ca is not None:
        server.load_verify_locations(ca)
        peer.load_verify_locations(ca)
    else:
        peer.load_default_certs()
    if verify_peer:
        server.verify_mode = ssl.CERT_OPTIONAL  # clients present none; peers must (/internal/)
    return NodeTls(server, peer, verify_peer)


def check_files(cert: str, key: str, ca: str | None, now: datetime.datetime | None = None) -> None:
    """ConfigError unless `cert` is a PEM certificate valid at `now`, `key` its unencrypted
    private key and `ca` (if given) holds at least one PEM certificate."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(_read("tls_cert_file", cert))
    except ValueError:
        raise ConfigError(f"tls_cert_file {cert}: not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(_read("tls_key_file", key), password=None)
    except TypeError:
        raise ConfigError(f"tls_key_file {key}: the key is encrypted; kvs needs it unencrypted "
                          "(e.g. `openssl pkey -in KEY -out PLAIN`), readable by the node only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"tls_key_file {key}: not a PEM private key") from None
    if _public(private.public_key()) != _public(certificate.public_key()):
        raise ConfigError(f"tls_key_file {key} is not the key of tls_cert_file {cert}")
    now = now or datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ConfigError(
            f"tls_cert_file {cert} is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now: peers and clients "
            "would refuse it")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(_read("tls_ca_file", ca))
        except ValueError:
            raise ConfigError(f"tls_ca_file {ca}: no PEM certificate in it") from None


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {_why(exc)}") from None


def _public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
