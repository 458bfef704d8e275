"""The Feast repository of a DERM deployment: its config, `apply`, and a `FeatureStore`.

Everything is built for an explicit `Workdir` (its spec, registry and Redis address) from
one Feast config file: Feast's own `FEAST_FS_YAML_FILE_PATH` when set (a team's own
`feature_store.yaml`, or e.g. `feature_store.spark.yaml`), else derm's default, which ships
inside the package (`derm_features/feast/feature_store.yaml`; in a checkout, a link to the
top-level `feature_store.yaml`).

With derm's default config, the registry lives in the work directory and the Redis address
is the work directory's, so two stores over two work directories live side by side in one
process and nothing here changes the process's environment. A team's own config keeps its
project, registry and Redis `connection_string` as written: derm then registers its views
in, and writes its embeddings under, that team's project (README, "Use derm from your own
Feast repo").
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import yaml

from derm_features.core.workdir import Workdir
from derm_features.feast.redis_url import feast_connection_string

DEFAULT_YAML = Path(__file__).with_name("feature_store.yaml")
# The checkout's root (where `feature_repo/` and the top-level feature_store.yaml are), or
# the package directory in an installed wheel (where the default config is a plain copy).
REPO_ROOT = DEFAULT_YAML.resolve().parent
WORKDIR_REGISTRY = "derm_features.feast.plugins.WorkdirRegistryStore"
# derm's online stores: Feast's Redis store reading REDIS_URL, and the same with Pin retrieval
# (`derm_features.serving.feast_store`; a string here: this layer does not import serving)
DERM_ONLINE_STORE = "derm_features.feast.plugins.DermRedisOnlineStore"
DERM_RETRIEVAL_STORE = "derm_features.serving.feast_store.DermOnlineStore"
# derm writes Feast's Redis layout itself (`redis_layout`), so the online store is Redis.
REDIS_TYPES = (
    "redis",
    DERM_ONLINE_STORE,
    DERM_RETRIEVAL_STORE,
    "feast.infra.online_stores.redis.RedisOnlineStore",
)


def feature_store_yaml() -> Path:
    """The Feast config file: `FEAST_FS_YAML_FILE_PATH` (Feast's variable), else derm's
    default (`DEFAULT_YAML`)."""
    return Path(os.environ.get("FEAST_FS_YAML_FILE_PATH") or DEFAULT_YAML)


def _config_data() -> dict:
    path = feature_store_yaml()
    try:
        data = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: Feast config not found (FEAST_FS_YAML_FILE_PATH)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a Feast config (a YAML mapping)")
    return data


def _registry_section(data: dict) -> dict:
    """The config's ``registry:`` as a mapping (Feast also accepts a bare path)."""
    registry = data.get("registry") or {}
    return {"path": registry} if isinstance(registry, str) else dict(registry)


def offline_store_type(path: Path | None = None) -> str:
    """`offline_store.type` of the Feast config (``duckdb`` or ``spark``)."""
    data = yaml.safe_load((path or feature_store_yaml()).read_text()) or {}
    return str((data.get("offline_store") or {}).get("type", "duckdb"))


def repo_config(workdir: Workdir):
    """A `feast.RepoConfig` for `workdir` from `feature_store_yaml()`.

    derm's own registry store keeps the registry at ``<workdir>/registry.db``; any other
    registry is used as configured. The Redis address is the work directory's unless the
    file sets ``online_store.connection_string`` for Feast's own Redis store; with
    ``redis_type: redis_cluster`` that address is one node of the cluster. Raises
    ValueError naming the file for an online store derm cannot write (not Redis) and for
    ``key_ttl_seconds``.
    """
    from feast.repo_config import RepoConfig

    path = feature_store_yaml()
    data = _config_data()
    registry = _registry_section(data)
    if registry.get("registry_store_type") == WORKDIR_REGISTRY:
        registry["path"] = str(workdir.registry)
    data["registry"] = registry
    online = dict(data.get("online_store") or {})
    if online.get("type", "sqlite") not in REDIS_TYPES:  # Feast's default store is sqlite
        raise ValueError(
            f"{path}: online_store.type {online.get('type', 'sqlite')!r} is not supported: "
            "derm writes Feast's Redis layout, so the online store must be `redis`"
        )
    if online.get("key_ttl_seconds"):
        # Carried entities are not re-pushed every day, so their keys would expire in Redis
        # while the pool and the offline store still hold them.
        raise ValueError(
            f"{path}: online_store.key_ttl_seconds is not supported: derm "
            "removes expired entities from Redis itself (spec ttl_days); drop the key"
        )
    if online["type"] in (DERM_ONLINE_STORE, DERM_RETRIEVAL_STORE) or not online.get(
        "connection_string"
    ):
        cluster = online.get("redis_type") == "redis_cluster"
        online["connection_string"] = feast_connection_string(workdir.redis_url, cluster)
    if online.get("redis_type") == "redis_cluster" and re.search(
        r"(^|,)db=", online["connection_string"]
    ):  # redis-py's cluster client refuses `db` (even 0) only when it first connects
        raise ValueError(
            f"{path}: online_store.connection_string has a db= part, but a Redis Cluster "
            "(redis_type: redis_cluster) has only database 0 and takes no db: drop it"
        )
    if online["type"] == DERM_RETRIEVAL_STORE and not online.get("workdir"):
        online["workdir"] = str(workdir.root)  # where its Pin indexes live
    data["online_store"] = online
    return RepoConfig(repo_path=path.resolve().parent, **data)


def registry_file(workdir: Workdir) -> Path | None:
    """The local file of the registry `workdir` uses (derm's: ``<workdir>/registry.db``; a
    team's file registry: its path), None for a remote or SQL registry."""
    registry = _registry_section(_config_data())
    if registry.get("registry_store_type") == WORKDIR_REGISTRY:
        return workdir.registry
    location = str(registry.get("path", ""))
    if registry.get("registry_type", "file") != "file" or "://" in location or not location:
        return None
    file = Path(location)
    return file if file.is_absolute() else feature_store_yaml().resolve().parent / file


def has_registry(workdir: Workdir) -> bool:
    """Whether the registry `workdir` uses exists (a remote one is taken to exist)."""
    file = registry_file(workdir)
    return file is None or file.is_file()


def feast_objects(workdir: Workdir) -> list:
    """The entities, sources, views and services of `workdir.spec` (see `definitions`)."""
    from derm_features.feast.definitions import feast_objects as build

    return list(build(workdir.spec, workdir, offline_store_type()).values())


def apply(workdir: Workdir, quiet: bool = False) -> None:
    """Registers the spec's Feast objects for `workdir`: what `feast apply` does.

    `DERM_WORKDIR=<workdir> feast apply` from the repository root is equivalent (tested),
    but Feast's CLI walks every ``*.py`` under the root, the virtualenv included, which
    costs it tens of seconds; this uses the public `FeatureStore.apply` instead.
    """
    for model, entity, _ in workdir.spec.views():
        workdir.offline(model, entity).mkdir(parents=True, exist_ok=True)
    objects = feast_objects(workdir)
    store = feature_store(workdir)
    store.apply(objects)
    if not quiet:
        names = sorted(getattr(o, "name", "?") for o in objects)
        where = registry_file(workdir) or store.config.registry.path
        print(f"feast apply: {len(objects)} objects registered in {where}")
        print("  " + ", ".join(names))


def feature_store(workdir: Workdir):
    """A `feast.FeatureStore` over `workdir` (after `apply`)."""
    from feast import FeatureStore

    config = repo_config(workdir)
    return FeatureStore(repo_path=str(config.repo_path), config=config)


def registered_ttl_days(workdir: Workdir) -> dict[str, int]:
    """view -> pool TTL in days (the Feast ttl minus the one day `definitions` adds) of the
    spec's views registered in `workdir`; {} when nothing is registered there yet.

    Read once per version of the registry file: the daily job checks it for every model,
    entity and day, and a Feast store costs far more than the check.
    """
    file = registry_file(workdir)
    if file is None:  # a remote registry: no cheap version stamp, so read it each time
        return dict(_registered_ttl_days.__wrapped__(workdir, 0, 0))
    if not file.exists():
        return {}
    stat = file.stat()
    return dict(_registered_ttl_days(workdir, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _registered_ttl_days(workdir: Workdir, mtime_ns: int, size: int) -> tuple:
    from feast.errors import FeatureViewNotFoundException

    store = feature_store(workdir)
    out = {}
    for _, _, view in workdir.spec.views():
        try:
            ttl = store.get_feature_view(view).ttl
        except FeatureViewNotFoundException:
            continue
        out[view] = ttl.days - 1
    return tuple(out.items())


def check_ttl(workdir: Workdir, ttl_days: int, flag: str = "ttl_days") -> None:
    """Refuses a pool TTL that differs from the registered views' ttl, so that Feast's
    offline store and the pool (and Redis) drop an entity on the same day.

    Raises ValueError saying to change the spec and run `derm apply`.
    """
    for view, registered in registered_ttl_days(workdir).items():
        if registered != ttl_days:
            raise ValueError(
                f"{flag} {ttl_days} differs from the {registered} days that view '{view}' is "
                f"registered with in {registry_file(workdir) or 'the registry'}: Feast would "
                "keep serving entities the pool has dropped. Change ttl_days in derm.yaml's "
                "spec: section and run `derm apply`, then run this again"
            )
