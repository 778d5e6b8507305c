"""ZeroMQ CURVE keys for tcp links: key files and what a socket needs.

CURVE (RFC 26) authenticates both ends and encrypts the link; the frames it
carries are unchanged. It applies to ``tcp://`` endpoints only: an ``ipc://``
socket file is guarded by its file permissions and never leaves the node, and
same-node batches are the bulk of the traffic, so they are not paid for twice.

Keys are zmq's certificate files (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key and is handed out; ``NAME.key_secret`` holds both and
stays on its host (mode 0600). The server side (ZAP, which client keys get
in) is `zap`; handshake diagnostics are `monitor`; binding and connecting a
socket's plain and CURVE endpoints side by side is `sockets`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import zmq
import zmq.auth

from ..errors import InvalidInput, Refused

ALLOW_ANY = "*"   # `authorized`: any client key (encryption without client authentication)
SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"


def generate(path) -> tuple[str, str]:
    """Write ``PATH.key`` (public) and ``PATH.key_secret`` (0600); their paths.

    Refuses to overwrite: replacing a key pair silently locks out every peer
    that trusts the old one."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if not name or name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        raise InvalidInput(f"{path}: give the key pair's base name (writes NAME{PUBLIC_SUFFIX} "
                         f"and NAME{SECRET_SUFFIX})")
    targets = [os.path.join(directory, name + s) for s in (PUBLIC_SUFFIX, SECRET_SUFFIX)]
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise Refused(f"{', '.join(existing)} already exist(s); remove them first to replace "
                      "the key pair")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # zmq writes with the default mode: the umask keeps the secret from ever
    # being readable by others, even between write and chmod.
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_secret(path, what: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a secret certificate; ValueError naming ``what``."""
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what}: cannot read CURVE secret key file {path}: {exc}") from None
    if not secret:
        raise InvalidInput(f"{what}: {path} holds no secret key (give the NAME{SECRET_SUFFIX} file)")
    return public, secret


def load_public(path, what: str) -> bytes:
    """A Z85 public key from a certificate file (public or secret)."""
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what}: cannot read CURVE public key file {path}: {exc}") from None
    return public


def _z85(key, what: str) -> bytes:
    """A key given as a 40-character Z85 string or a certificate file."""
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    return load_public(key, what)


@dataclass(frozen=True)
class ClientKeys:
    """What a connecting socket needs: the server's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_key, client_secret_key=None, what: str = "curve") -> ClientKeys:
        """From files (or Z85 strings). Without a client key, a fresh pair: the
        link is encrypted, and only a server that allows any client accepts it."""
        server = _z85(server_public_key, f"{what}: server_public_key")
        if client_secret_key is None:
            public, secret = zmq.curve_keypair()
        else:
            public, secret = load_secret(client_secret_key, f"{what}: client_secret_key")
        return cls(server, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True)
class ServerKeys:
    """What a binding socket needs: its own pair and the clients it lets in."""

    public: bytes
    secret: bytes
    authorized: str      # directory of client public key files, or ALLOW_ANY

    @classmethod
    def load(cls, secret_key, authorized, what: str = "curve") -> ServerKeys:
        public, secret = load_secret(secret_key, f"{what}: secret_key")
        authorized = os.fspath(authorized)
        if authorized != ALLOW_ANY and not os.path.isdir(authorized):
            raise InvalidInput(f"{what}: authorized: {authorized} is not a directory of client "
                             f"public keys (or {ALLOW_ANY!r} for any client)")
        return cls(public, secret, authorized)


__all__ = ["ALLOW_ANY", "ClientKeys", "PUBLIC_SUFFIX", "SECRET_SUFFIX", "ServerKeys",
           "generate", "load_public", "load_secret"]
