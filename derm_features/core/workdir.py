"""The work directory: where every artifact of a run lives (DESIGN.md, "Work directory").

    <workdir>/
      registry.db                                   Feast registry
      logs/                                         generated logs (derm demo)
      truth/                                        latent truth of generated logs (derm generate)
      checkpoints/<model>/<YYYY-MM-DD>.ckpt         upstream snapshots
      daily/<model>/<entity>/ds=<YYYY-MM-DD>/       raw tower outputs, one row per occurrence
      pool/<model>/<entity>/ds=<YYYY-MM-DD>/        aggregated pool, one row per live entity
      offline/<model>_<entity>_embedding/           Feast offline source (changed rows)
      training_sets/<name>/ds=<YYYY-MM-DD>/         downstream training sets (from Feast)
      index/<model>/ds=<YYYY-MM-DD>/                Pin ANN index built from that day's pool
      metrics/                                      embedding-health and training metrics
      .staging/<model>/<entity>/.tmp-*/             a materialization's spill files (during a run)

Every path in the project comes from a `Workdir`, so nothing else spells these out.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from derm_features.core.spec import DermSpec, view_name

DEFAULT_WORKDIR = "./data"


def workdir_root(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else `DERM_WORKDIR`, else ``./data``; always absolute."""
    chosen = explicit or os.environ.get("DERM_WORKDIR") or DEFAULT_WORKDIR
    return Path(chosen).expanduser().resolve()


def ds(day: dt.date) -> str:
    """The partition value of a day, ``ds=YYYY-MM-DD``."""
    return f"ds={day.isoformat()}"


@dataclass(frozen=True)
class Workdir:
    """Paths of one run's artifacts, laid out for a `DermSpec` (default: ctr and cvr).

    Pure: creating one touches no disk. A model or entity outside the spec raises ValueError.
    """

    root: Path
    spec: DermSpec = field(default_factory=DermSpec)
    # The Redis online store of this deployment (redis:// URL); None: $REDIS_URL, else
    # redis://127.0.0.1:6379 (derm_features.feast.redis_url).
    redis_url: str | None = None

    @classmethod
    def resolve(
        cls,
        explicit: Workdir | str | os.PathLike | None = None,
        spec: DermSpec | None = None,
        redis_url: str | None = None,
    ) -> Workdir:
        """`explicit` (a Workdir is returned as it is), else $DERM_WORKDIR, else ./data,
        made absolute, with `spec` (default: the default spec) and `redis_url`."""
        if isinstance(explicit, Workdir):
            return explicit
        return cls(workdir_root(explicit), spec or DermSpec(), redis_url)

    @property
    def registry(self) -> Path:
        return self.root / "registry.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def truth(self) -> Path:
        """The generator's latent vectors and formulas (`derm_features.synthetic`)."""
        return self.root / "truth"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def checkpoint(self, model: str, day: dt.date) -> Path:
        self.spec.check_model(model)
        return self.root / "checkpoints" / model / f"{day.isoformat()}.ckpt"

    def checkpoints_dir(self, model: str) -> Path:
        self.spec.check_model(model)
        return self.root / "checkpoints" / model

    def daily_dir(self, model: str, entity: str) -> Path:
        self.spec.check_model_entity(model, entity)
        return self.root / "daily" / model / entity

    def daily(self, model: str, entity: str, day: dt.date) -> Path:
        return self.daily_dir(model, entity) / ds(day)

    def pool_dir(self, model: str, entity: str) -> Path:
        self.spec.check_model_entity(model, entity)
        return self.root / "pool" / model / entity

    def pool(self, model: str, entity: str, day: dt.date) -> Path:
        return self.pool_dir(model, entity) / ds(day)

    def staging(self, model: str, entity: str) -> Path:
        """Scratch space of one (model, entity)'s runs: temporary files that never outlive
        the run (`core.atomic.scratch_dir`); hidden, so no reader lists it."""
        self.spec.check_model_entity(model, entity)
        return self.root / ".staging" / model / entity

    def offline(self, model: str, entity: str) -> Path:
        self.spec.check_model_entity(model, entity)
        return self.root / "offline" / view_name(model, entity)

    def index_dir(self, model: str) -> Path:
        self.spec.check_model(model)
        return self.root / "index" / model

    def index(self, model: str, day: dt.date) -> Path:
        """The Pin ANN index built from the Pin pool of `day` (`derm_features.serving.ann`)."""
        return self.index_dir(model) / ds(day)

    def training_set(self, name: str) -> Path:
        """A downstream training set (Parquet, ``ds=`` partitions) built from Feast."""
        return self.root / "training_sets" / name


def parse_day(value: str, what: str = "date") -> dt.date:
    """A ``YYYY-MM-DD`` string as a date, with an error that names the flag or field."""
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a day as YYYY-MM-DD, got '{value}'") from None


def days_in_dir(directory: Path) -> list[dt.date]:
    """The days of the ``ds=YYYY-MM-DD`` partitions under `directory`, sorted."""
    if not directory.is_dir():
        return []
    days = []
    for child in directory.iterdir():
        if child.is_dir() and child.name.startswith("ds="):
            try:
                days.append(dt.date.fromisoformat(child.name[3:]))
            except ValueError:
                continue
    return sorted(days)
