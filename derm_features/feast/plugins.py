"""Two small Feast plug-ins so `feature_store.yaml` follows the environment.

Feast expands ``${VAR}`` in the YAML but has no defaults, so an unset variable would
break a plain `feast apply`. These plug-ins resolve the two moving parts at run time:

- `WorkdirRegistryStore`: a file registry whose relative path lives inside the derm
  work directory (``--workdir`` / `DERM_WORKDIR`, default ``./data``).
- `DermRedisOnlineStore`: Feast's own Redis online store, with the address taken from
  `REDIS_URL` (see `derm_features.feast.redis_url`) unless the YAML sets `connection_string`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig
from pydantic import model_validator

from derm_features.core.workdir import workdir_root
from derm_features.feast.redis_url import feast_connection_string


class WorkdirRegistryStore(FileRegistryStore):
    """Feast's file registry, with relative paths resolved inside the derm work directory."""

    def __init__(self, registry_config: RegistryConfig, repo_path: Path):
        path = Path(registry_config.path or "registry.db")
        if not path.is_absolute():
            path = workdir_root() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(registry_config.model_copy(update={"path": str(path)}), repo_path)


class DermRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis config; `connection_string` defaults to the one derived from REDIS_URL
    (one node of the cluster, without a database, for ``redis_type: redis_cluster``)."""

    type: Literal["derm_features.feast.plugins.DermRedisOnlineStore"] = (
        "derm_features.feast.plugins.DermRedisOnlineStore"
    )

    @model_validator(mode="before")
    @classmethod
    def _connection_from_environment(cls, values):
        if isinstance(values, dict) and not values.get("connection_string"):
            cluster = values.get("redis_type") == "redis_cluster"  # a str or Feast's str enum
            values = {**values, "connection_string": feast_connection_string(cluster=cluster)}
        return values


class DermRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store, unchanged; only its config reads REDIS_URL."""
