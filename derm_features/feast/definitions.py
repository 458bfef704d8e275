"""The Feast objects of a DERM spec: entities, offline sources, feature views, services.

One function builds them all from a `DermSpec` and a work directory, so the views that
`derm apply` registers, the ones `feast apply` finds in `feature_repo/` and the names
every other module derives from the spec cannot drift apart. For the default spec:

    entities   user (user_id), pin (pin_id)                       int64 join keys
    sources    <view>_source: <workdir>/offline/<view>/ Parquet   (SparkSource on Spark)
    views      ctr_user_embedding, ctr_pin_embedding, cvr_user_embedding, cvr_pin_embedding
    services   ctr_ranking, cvr_ranking: every view of the spec each

Each view row: `embedding` (L2-normalised float32 vector of D), `last_seen` (the day of
the entity's newest daily embedding) and `model_version` (the upstream checkpoint it came
from), as the features `<model>_<entity>_embedding`, `..._last_seen`, `..._model_version`
(`feature_name`): unique across views, so `ctr_ranking` (four views) works with Feast's
default short names; the Parquet files keep the plain column names (`field_mapping`).
Each source holds only the rows whose aggregated embedding changed that day, stamped at the
end of the day they include (DESIGN.md); paths are absolute because DuckDB resolves
relative paths against the current directory.

ttl (paper appendix C: entities active in the past three months). The pool keeps an
entity last seen on day L through day L + ttl_days, and the pool of day t serves events of
day t+1. Offline rows are stamped at the end of day L, (L+1) 00:00 UTC, and Feast serves a
row while event_timestamp <= stamp + ttl (inclusive). So the views' ttl is ttl_days + 1
days (`DermSpec.feast_ttl`): it serves every event of day L + ttl_days + 1 and none after
the first instant of day L + ttl_days + 2 (that instant itself is still served: Feast's
comparison is inclusive and ibis refuses a ttl of mixed units such as 91 days minus 1
microsecond). Stamping at t 23:59:59.999999 instead would close that instant but open a
worse one: an event in day t's last microsecond would see day t's own value.

Example:
    >>> objects = feast_objects(DermSpec(), Workdir(Path("/tmp/w")))
    >>> sorted(name for name in objects if name.endswith("_ranking"))
    ['ctr_ranking', 'cvr_ranking']
"""

from __future__ import annotations

from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, String, UnixTimestamp

from derm_features.core.spec import (
    PUBLISHED_COLUMNS,
    DermSpec,
    feature_name,
    join_key,
    service_name,
)
from derm_features.core.workdir import Workdir

ENTITY_DESCRIPTIONS = {
    "user": "A Pinterest user; DERM's user tower embeds it.",
    "pin": "An ad Pin; DERM's Pin tower embeds it.",
}
TOWER_NAMES = {"user": "User", "pin": "Pin"}


def feast_objects(spec: DermSpec, workdir: Workdir, offline_store: str = "duckdb") -> dict:
    """Every Feast object of `spec` in `workdir`, by the name a feature repo would give it.

    offline_store: the `offline_store.type` of the Feast config, ``duckdb`` (FileSource)
    or ``spark`` (SparkSource over the same directories). Returns a dict of name -> object,
    in registration order: entities, sources, views, services. Pure: touches no disk.
    """
    objects: dict = {}
    entities = {}
    for entity in spec.entity_names:
        entities[entity] = Entity(
            name=entity,
            join_keys=[join_key(entity)],
            value_type=ValueType.INT64,
            description=ENTITY_DESCRIPTIONS[entity],
        )
        objects[entity] = entities[entity]
    views = []
    for model, entity, view in spec.views():
        source = _source(
            f"{view}_source", workdir.offline(model, entity), model, entity, offline_store
        )
        objects[source.name] = source
        views.append(
            FeatureView(
                name=view,
                entities=[entities[entity]],
                ttl=spec.feast_ttl,
                schema=[
                    Field(name=feature_name(model, entity, "embedding"), dtype=Array(Float32)),
                    Field(name=feature_name(model, entity, "last_seen"), dtype=UnixTimestamp),
                    Field(name=feature_name(model, entity, "model_version"), dtype=String),
                ],
                source=source,
                online=True,
                description=f"{TOWER_NAMES[entity]} tower of the upstream {model} model.",
                tags={"derm": "embedding", "derm_model": model, "derm_entity": entity},
            )
        )
    for view in views:
        objects[view.name] = view
    for model in spec.model_names:
        name = service_name(model)
        objects[name] = FeatureService(
            name=name,
            features=views,
            description=f"DERM embeddings for the downstream {model} ranking model.",
        )
    return objects


def repo_objects(
    config: str | Path | None = None,
    workdir: str | Path | None = None,
    offline_store: str | None = None,
) -> dict:
    """DERM's Feast objects for a file of a feature repository (derm's or a team's own).

    config: the derm.yaml whose ``spec:`` to declare (default ``./derm.yaml``, else the
    default spec); workdir: where derm writes the offline rows (default `DERM_WORKDIR`,
    else ``./data``); offline_store: ``duckdb`` or ``spark`` (default: the Feast config's,
    see `derm_features.feast.repo.feature_store_yaml`). Returns `feast_objects`' dict;
    raises SpecError naming derm.yaml when its spec is invalid.

    A team's own repository declares DERM's views with one file, then runs `feast apply`::

        # feature_repo/derm_embeddings.py
        from derm_features.feast.definitions import repo_objects

        globals().update(repo_objects("derm.yaml", "/data/derm"))
    """
    from derm_features.core.spec import load_spec
    from derm_features.feast.repo import offline_store_type

    spec = load_spec(config)
    return feast_objects(
        spec, Workdir.resolve(workdir, spec=spec), offline_store or offline_store_type()
    )


def _source(name: str, path: Path, model: str, entity: str, offline_store: str):
    description = f"Daily changed rows of the {model} upstream model's {entity} embeddings."
    # the files' plain column names -> the view's unique feature names
    mapping = {column: feature_name(model, entity, column) for column in PUBLISHED_COLUMNS}
    if offline_store == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(
            name=name,
            path=str(path),
            file_format="parquet",
            timestamp_field="event_timestamp",
            field_mapping=mapping,
            description=description,
        )
    return FileSource(
        name=name,
        path=str(path),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        field_mapping=mapping,
        description=description,
    )


def feature_view_objects(objects: dict) -> list[FeatureView]:
    """The feature views among `feast_objects`' values."""
    return [o for o in objects.values() if isinstance(o, FeatureView)]
