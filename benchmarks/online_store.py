"""What the online benchmarks share: a scratch Feast store on a flushed Redis database."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def add_redis_url_flag(parser) -> None:
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis DB to use (flushed)")


@contextlib.contextmanager
def scratch_store(redis_url: str, name: str) -> Iterator[tuple[object, redis.Redis]]:
    """(FeatureStore, raw redis-py client): the feature repo applied in a new work directory
    under /tmp, online store = `redis_url`'s database, flushed on entry and on exit (the
    directory is removed on exit)."""
    root = Path(tempfile.mkdtemp(prefix=f"derm-bench-{name}-"))

    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import apply, feature_store

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        workdir = Workdir(root, redis_url=redis_url)
        apply(workdir, quiet=True)
        yield feature_store(workdir), client
    finally:
        client.flushdb()
        shutil.rmtree(root, ignore_errors=True)
