"""The Redis address: one URL from the environment, turned into what each client needs.

`REDIS_URL` (default ``redis://127.0.0.1:6379``) follows redis-py's URL form:
``redis://[:password@]host:port[/db]`` or ``rediss://`` for TLS. For a Redis Cluster (Feast's
``redis_type: redis_cluster``) it names any one node, without a database. Credentials never
leave this module in clear text: `redacted()` is what logs and errors show.

Run as a module for the setup script:
``python -m derm_features.feast.redis_url ping|hostport|redacted``.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import unquote, urlparse

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"


def redis_url() -> str:
    """The configured Redis URL (environment `REDIS_URL`, else the local default)."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def _parsed(url: str | None = None):
    parsed = urlparse(url or redis_url())
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"REDIS_URL must start with redis:// or rediss://, got scheme '{parsed.scheme}'"
        )
    return parsed


def redacted(url: str | None = None) -> str:
    """The URL with any password replaced by ``***``, safe for logs and error messages."""
    p = _parsed(url)
    auth = ""
    if p.username or p.password:
        auth = f"{p.username or ''}:***@"
    db = p.path if p.path not in ("", "/") else ""
    return f"{p.scheme}://{auth}{p.hostname}:{p.port or 6379}{db}"


def feast_connection_string(url: str | None = None, cluster: bool = False) -> str:
    """Feast's Redis connection string (``host:port,db=0,ssl=true,password=...``).

    `cluster`: for Feast's ``redis_type: redis_cluster``, where the URL names one node
    (redis-py discovers the others) and a Redis Cluster has only database 0, so no ``db``
    part is written; a URL selecting another database raises ValueError.
    """
    p = _parsed(url)
    parts = [f"{p.hostname or '127.0.0.1'}:{p.port or 6379}"]
    db = p.path.lstrip("/")
    if cluster and db and int(db) != 0:
        raise ValueError(
            f"REDIS_URL {redacted(url)} selects database {int(db)}, but a Redis Cluster "
            "(redis_type: redis_cluster) has only database 0: drop the /db part"
        )
    if db and not cluster:
        parts.append(f"db={int(db)}")
    if p.scheme == "rediss":
        parts.append("ssl=true")
    if p.username:
        parts.append(f"username={unquote(p.username)}")
    if p.password:
        parts.append(f"password={unquote(p.password)}")
    return ",".join(parts)


def redacted_connection_string(connection_string: str) -> str:
    """A Feast connection string (``host:port,db=1,ssl=true,password=...``) shown as a
    redacted URL, for errors raised where only the store's config is at hand."""
    # Only host:port parts: a password holding a comma must not leak through a stray part.
    hosts = [p for p in connection_string.split(",") if re.fullmatch(r"[\w.\-\[\]:]+:\d+", p)]
    params = dict(part.split("=", 1) for part in connection_string.split(",") if "=" in part)
    scheme = "rediss" if params.get("ssl", "").lower() == "true" else "redis"
    auth = f"{params.get('username', '')}:***@" if params.get("password") else ""
    db = f"/{params['db']}" if params.get("db") else ""
    return f"{scheme}://{auth}{','.join(hosts)}{db}"


def client(url: str | None = None, **kwargs):
    """A redis-py client for the configured URL (credentials and TLS from the URL)."""
    import redis

    return redis.Redis.from_url(url or redis_url(), **kwargs)


def _main(argv: list[str]) -> int:
    command = argv[0] if argv else "ping"
    if command == "ping":
        try:
            client(socket_connect_timeout=1).ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            print(f"no Redis at {redacted()}: {type(exc).__name__}", file=sys.stderr)
            return 1
        return 0
    if command == "hostport":
        p = _parsed()
        print(p.hostname or "127.0.0.1", p.port or 6379)
        return 0
    if command == "redacted":
        print(redacted())
        return 0
    print(f"unknown command '{command}' (ping | hostport | redacted)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
