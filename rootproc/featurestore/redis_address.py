"""A redis:// or rediss:// feature store address, parsed (rootproc/featurestore/redis_store.py)."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

NAMESPACE = "features"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def parse_address(address: str) -> dict:
    """The parts of a redis:// or rediss:// address; ValueError naming what is wrong."""
    parts = urlsplit(address)
    shown = f"{parts.scheme}://{parts.hostname or '?'}"
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"feature store {shown}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"feature store {address.split('@')[-1]}: no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"feature store {shown}: the path must be a database number, got {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"namespace"})
    if unknown:
        raise ValueError(f"feature store {shown}: unknown parameters {unknown} (known: namespace)")
    namespace = query.get("namespace", [NAMESPACE])[-1]
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(f"feature store {shown}: namespace {namespace!r} must be 1-64 letters, "
                         "digits, '_', '.' or '-'")
    db = int(path or 0)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {"tls": parts.scheme == "rediss", "host": parts.hostname, "port": port, "db": db,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "namespace": namespace,
            "shown": f"{parts.scheme}://{host}:{port}/{db}?namespace={namespace}"}


__all__ = ["NAMESPACE", "parse_address"]
