"""Materialization engines behind one interface (`base.Engine`): `local` runs the buckets
in this process, `spark` as one Spark task each. `make_engine` is the only place that
knows the names."""

from __future__ import annotations

from materialize.engines.base import STATS_COLUMNS, Engine

ENGINES = ("local", "spark")

__all__ = ["ENGINES", "STATS_COLUMNS", "Engine", "make_engine"]


def make_engine(name: str, *, spark_master: str = "local[2]", spark=None) -> Engine:
    """The engine called `name` (one of ENGINES).

    spark_master: the Spark engine's master URL (``local[2]``, ``spark://host:7077``);
    spark: an existing SparkSession to reuse instead. Raises ValueError for another name.
    """
    if name == "local":
        from materialize.engines.local import LocalEngine

        return LocalEngine()
    if name == "spark":
        from materialize.engines.spark import SparkEngine

        return SparkEngine(master=spark_master, session=spark)
    raise ValueError(f"engine must be one of {ENGINES}, got '{name}'")
