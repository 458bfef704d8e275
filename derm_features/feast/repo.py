"""The Feast repository of a DERM deployment: its config, `apply`, and a `FeatureStore`.

Everything is built for an explicit `Workdir` (its spec, registry and Redis address) from
`feature_store.yaml` (or the file named by Feast's own `FEAST_FS_YAML_FILE_PATH`, e.g.
`feature_store.spark.yaml`): the registry path and the Redis connection string are filled
in per work directory, so two stores over two work directories live side by side in one
process and nothing here changes the process's environment.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml

from derm_features.core.workdir import Workdir
from derm_features.feast.redis_url import feast_connection_string

REPO_ROOT = Path(__file__).resolve().parents[2]


def feature_store_yaml() -> Path:
    """The Feast config file: `FEAST_FS_YAML_FILE_PATH` (Feast's variable), else the
    repository's `feature_store.yaml`."""
    return Path(os.environ.get("FEAST_FS_YAML_FILE_PATH") or REPO_ROOT / "feature_store.yaml")


def offline_store_type(path: Path | None = None) -> str:
    """`offline_store.type` of the Feast config (``duckdb`` or ``spark``)."""
    data = yaml.safe_load((path or feature_store_yaml()).read_text()) or {}
    return str((data.get("offline_store") or {}).get("type", "duckdb"))


def repo_config(workdir: Workdir):
    """A `feast.RepoConfig` for `workdir`: the YAML's settings, with the registry at
    ``<workdir>/registry.db`` and the online store at the work directory's Redis URL."""
    from feast.repo_config import RepoConfig

    data = yaml.safe_load(os.path.expandvars(feature_store_yaml().read_text())) or {}
    data["registry"] = {**(data.get("registry") or {}), "path": str(workdir.registry)}
    online = dict(data.get("online_store") or {})
    if online.get("key_ttl_seconds"):
        # Carried entities are not re-pushed every day, so their keys would expire in Redis
        # while the pool and the offline store still hold them.
        raise ValueError(
            f"{feature_store_yaml()}: online_store.key_ttl_seconds is not supported: derm "
            "removes expired entities from Redis itself (spec ttl_days); drop the key"
        )
    online["connection_string"] = feast_connection_string(workdir.redis_url)
    data["online_store"] = online
    return RepoConfig(repo_path=REPO_ROOT, **data)


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
    feature_store(workdir).apply(objects)
    if not quiet:
        names = sorted(getattr(o, "name", "?") for o in objects)
        print(f"feast apply: {len(objects)} objects registered in {workdir.registry}")
        print("  " + ", ".join(names))


def feature_store(workdir: Workdir):
    """A `feast.FeatureStore` over `workdir` (after `apply`)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(REPO_ROOT), config=repo_config(workdir))


def registered_ttl_days(workdir: Workdir) -> dict[str, int]:
    """view -> pool TTL in days (the Feast ttl minus the one day `definitions` adds) of the
    spec's views registered in `workdir`; {} when nothing is registered there yet.

    Read once per version of the registry file: the daily job checks it for every model,
    entity and day, and a Feast store costs far more than the check.
    """
    if not workdir.registry.exists():
        return {}
    stat = workdir.registry.stat()
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
                f"registered with in {workdir.registry}: Feast would keep serving entities the "
                "pool has dropped. Change ttl_days in derm.yaml's spec: section and run "
                "`derm apply`, then run this again"
            )
