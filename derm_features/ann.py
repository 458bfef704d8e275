"""Pin retrieval: an ANN index over one day's Pin pool (paper section 1 and appendix C.3).

    <workdir>/index/<model>/ds=<YYYY-MM-DD>/
      pins.faiss       the faiss index; row i of the index is Pin `pin_ids[i]`
      pin_ids.npy      the id map, int64 [count]
      manifest.json    model, day, model_version, count, dim, metric, build params

The score of a (user, Pin) pair is the cosine of their embeddings: the inner product
of the L2-normalised vectors, which is what the upstream model scores (paper A.1: the
towers' outputs are unit vectors; the pool re-normalises after averaging, and the
index normalises again so a pool built without that still ranks by cosine).

Why faiss (faiss-cpu) rather than usearch: it adds no transitive dependency here (numpy
and packaging are already locked; usearch pulls numkong), and it has the exact index
(`IndexFlatIP`) and the graph index (`IndexHNSWFlat`) behind one interface, so small
pools can be searched exactly and large ones approximately with the same code.

An index directory is written with `derm_features.atomic.atomic_dir`: a reader sees the
old index of that day or the new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from derm_features.atomic import atomic_dir, clean_stale_tmp
from derm_features.provenance import ModelVersion, compatible
from derm_features.workdir import Workdir, check_model_entity, days_in_dir, join_key
from materialize.kernel import embedding_matrix
from materialize.storage import read_pool

INDEX_FILE = "pins.faiss"
ID_MAP_FILE = "pin_ids.npy"
MANIFEST_FILE = "manifest.json"
KINDS = ("auto", "flat", "hnsw")
# Below this many Pins an exact scan is as fast as a graph walk and has perfect recall.
AUTO_FLAT_BELOW = 10_000
# Returned past the end of a result list when the index holds fewer than k Pins.
MISSING_PIN = -1


class AnnIndexError(RuntimeError):
    """An index cannot be built, found or queried; the message says which and where."""


@dataclass(frozen=True)
class IndexConfig:
    """What `derm index` decides for one (model, day)."""

    workdir: Workdir
    model: str
    day: dt.date
    kind: str = "auto"  # auto: flat below AUTO_FLAT_BELOW Pins, else hnsw
    hnsw_m: int = 32  # graph degree: more = better recall, more memory
    ef_construction: int = 200  # build-time beam width
    ef_search: int = 256  # query-time beam width (>= k for good recall at k)

    def __post_init__(self) -> None:
        check_model_entity(self.model, "pin")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got '{self.kind}'")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """float32 C-contiguous rows of unit length; all-zero rows stay zero."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array [n, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_search(pins: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product: (rows [n, k] int64, scores [n, k] float32).

    The reference that the ANN index is measured against; `pins` and `queries` are
    expected normalised already.
    """
    k_eff = min(k, len(pins))
    scores = queries @ pins.T
    top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff else scores[:, :0]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    rows = np.take_along_axis(top, order, axis=1).astype(np.int64)
    return _pad(rows, np.take_along_axis(top_scores, order, axis=1), k)


def _pad(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - rows.shape[1]
    if missing <= 0:
        return rows, scores.astype(np.float32)
    n = rows.shape[0]
    rows = np.hstack([rows, np.full((n, missing), -1, np.int64)])
    scores = np.hstack([scores, np.full((n, missing), -np.inf, np.float32)])
    return rows, scores.astype(np.float32)


@dataclass(frozen=True)
class Manifest:
    """What an index was built from and how; written beside it as manifest.json."""

    model: str
    day: str  # YYYY-MM-DD of the Pin pool
    model_version: str  # the newest model version in the pool (one lineage and D)
    count: int
    dim: int
    kind: str  # flat | hnsw
    metric: str  # always "cosine" (inner product of L2-normalised vectors)
    hnsw_m: int | None
    ef_construction: int | None
    ef_search: int | None
    skipped_zero_norm: int  # pool rows left out because they cannot be normalised


class PinIndex:
    """A loaded (or freshly built) Pin index: `retrieve(user_vectors, k)`.

    Searches are read-only and may run from several threads at once.
    """

    def __init__(self, index, pin_ids: np.ndarray, manifest: Manifest):
        self.index = index
        self.pin_ids = np.asarray(pin_ids, dtype=np.int64)
        self.manifest = manifest

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @classmethod
    def from_vectors(
        cls,
        pin_ids: np.ndarray,
        vectors: np.ndarray,
        *,
        model: str,
        day: dt.date,
        model_version: str,
        kind: str = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 256,
    ) -> PinIndex:
        """Builds an index over `vectors` [count, D] (normalised here) of `pin_ids`."""
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        unit = l2_normalise(vectors)
        if len(pin_ids) != len(unit):
            raise ValueError(f"{len(pin_ids)} pin ids for {len(unit)} vectors")
        usable = np.linalg.norm(unit, axis=1) > 0
        pin_ids, unit = pin_ids[usable], unit[usable]
        dim = unit.shape[1]
        chosen = kind if kind != "auto" else ("flat" if len(unit) < AUTO_FLAT_BELOW else "hnsw")
        if chosen == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        index.add(unit)
        hnsw = chosen == "hnsw"
        manifest = Manifest(
            model=model,
            day=day.isoformat(),
            model_version=model_version,
            count=int(len(pin_ids)),
            dim=int(dim),
            kind=chosen,
            metric="cosine",
            hnsw_m=hnsw_m if hnsw else None,
            ef_construction=ef_construction if hnsw else None,
            ef_search=ef_search if hnsw else None,
            skipped_zero_norm=int((~usable).sum()),
        )
        return cls(index, pin_ids, manifest)

    def retrieve(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k Pins of each user: (pin_ids [n, k] int64, scores [n, k] float32, cosine).

        `user_vectors` [n, D] are normalised here. When the index holds fewer than k
        Pins, the tail of each row is `MISSING_PIN` with score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = l2_normalise(np.atleast_2d(user_vectors))
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"user vectors have D={queries.shape[1]}, the index of "
                f"{self.manifest.model_version} has D={self.dim}"
            )
        k_eff = min(k, len(self.pin_ids))
        if k_eff == 0:
            return _pad(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0)), k)
        scores, rows = self.index.search(queries, k_eff)
        ids = np.where(rows >= 0, self.pin_ids[np.maximum(rows, 0)], MISSING_PIN)
        scores = np.where(rows >= 0, scores, -np.inf)
        return _pad(ids, scores, k)

    def save(self, directory: Path) -> None:
        """Writes the three files into `directory` (an empty directory; see `build_index`)."""
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        np.save(directory / ID_MAP_FILE, self.pin_ids, allow_pickle=False)
        (directory / MANIFEST_FILE).write_text(json.dumps(asdict(self.manifest), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PinIndex:
        """The index saved in `directory`, checked for consistency with its manifest."""
        directory = Path(directory)
        paths = [directory / name for name in (INDEX_FILE, ID_MAP_FILE, MANIFEST_FILE)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise AnnIndexError(f"index {directory} is incomplete: missing {missing}")
        manifest = Manifest(**json.loads((directory / MANIFEST_FILE).read_text()))
        index = faiss.read_index(str(directory / INDEX_FILE))
        pin_ids = np.load(directory / ID_MAP_FILE, allow_pickle=False)
        if not (index.ntotal == len(pin_ids) == manifest.count and index.d == manifest.dim):
            raise AnnIndexError(
                f"index {directory} is inconsistent: {index.ntotal} vectors, {len(pin_ids)} ids, "
                f"manifest says {manifest.count} of D={manifest.dim}"
            )
        if manifest.ef_search is not None:
            index.hnsw.efSearch = manifest.ef_search
        return cls(index, pin_ids, manifest)


def build_index(config: IndexConfig) -> PinIndex:
    """Builds the index of the Pin pool of `config.day` and writes it atomically to
    `workdir.index(model, day)` (replacing an earlier build of that day)."""
    wd = config.workdir
    pool_dir = wd.pool(config.model, "pin", config.day)
    if not pool_dir.is_dir():
        raise AnnIndexError(
            f"no Pin pool of {config.model} for {config.day} at {pool_dir}: run "
            f"`derm materialize --model {config.model} --entity pin --date {config.day}` first"
        )
    table = read_pool(pool_dir, ["pin_id", "embedding", "model_version"])
    # Carried-over Pins keep the version of the day they were last seen: one lineage and
    # D (the materializer guarantees it), several snapshot days. The newest names the index.
    versions = sorted(
        (ModelVersion.parse(v) for v in pc.unique(table["model_version"]).to_pylist()),
        key=lambda v: v.day,
    )
    if not versions:
        raise AnnIndexError(f"pool {pool_dir} is empty")
    if not all(compatible(v, versions[-1]) for v in versions):
        raise AnnIndexError(
            f"pool {pool_dir} mixes incompatible model versions {sorted(map(str, versions))}"
        )
    dim = versions[-1].dim
    index = PinIndex.from_vectors(
        table["pin_id"].to_numpy(),
        embedding_matrix(table["embedding"], dim),
        model=config.model,
        day=config.day,
        model_version=str(versions[-1]),
        kind=config.kind,
        hnsw_m=config.hnsw_m,
        ef_construction=config.ef_construction,
        ef_search=config.ef_search,
    )
    target = wd.index(config.model, config.day)
    clean_stale_tmp(target.parent)
    with atomic_dir(target) as tmp:
        index.save(tmp)
    return index


def index_days(workdir: Workdir, model: str) -> list[dt.date]:
    """Days that have a complete index for `model`, oldest first."""
    return [
        d
        for d in days_in_dir(workdir.index_dir(model))
        if (workdir.index(model, d) / MANIFEST_FILE).is_file()
    ]


def load_index(workdir: Workdir, model: str, day: dt.date | None = None) -> PinIndex:
    """The index of `day`, or the newest one when `day` is None."""
    if day is None:
        days = index_days(workdir, model)
        if not days:
            raise AnnIndexError(
                f"no index for model '{model}' under {workdir.index_dir(model)}: "
                f"run `derm index --model {model} --date <day>` first"
            )
        day = days[-1]
    directory = workdir.index(model, day)
    if not directory.is_dir():
        raise AnnIndexError(f"no index of model '{model}' for {day} at {directory}")
    return PinIndex.load(directory)


def pool_vector(
    workdir: Workdir, model: str, entity: str, entity_id: int, day: dt.date
) -> tuple[np.ndarray, str] | None:
    """(embedding [D], model_version) of one entity in the pool of `day`, or None."""
    pool_dir = workdir.pool(model, entity, day)
    if not pool_dir.is_dir():
        raise AnnIndexError(f"no {entity} pool of {model} for {day} at {pool_dir}")
    key = join_key(entity)
    table = read_pool(pool_dir, [key, "embedding", "model_version"])
    table = table.filter(pc.equal(table[key], pa.scalar(entity_id, pa.int64())))
    if table.num_rows == 0:
        return None
    version = table["model_version"][0].as_py()
    return embedding_matrix(table["embedding"], ModelVersion.parse(version).dim)[0], version
