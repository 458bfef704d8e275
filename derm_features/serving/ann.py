"""Pin retrieval: an ANN index over one day's Pin pool (paper section 1 and appendix C.3).

    <workdir>/index/<model>/ds=<YYYY-MM-DD>/
      pins.faiss       the faiss index; row i of the index is Pin `pin_ids[i]`
      pin_ids.npy      the id map, int64 [count]
      manifest.json    model, day, model_version, count, dim, metric, build params,
                       popularity source and beta

The score of a (user, Pin) pair is the cosine of their embeddings: the inner product
of the L2-normalised vectors, which is what the upstream model scores (paper A.1: the
towers' outputs are unit vectors; the pool re-normalises after averaging, and the
index normalises again so a pool built without that still ranks by cosine).

With popularity (the default when the log is at hand; `derm_features.serving.popularity` says
which counts and how beta is fitted) the score is

    score(u, p) = cos(u, p) + beta * log_popularity(p)

computed by the same inner-product index with two extra columns (Bachrach et al. 2014's
reduction of inner-product search to search among equal-norm vectors):

    Pin row    [unit(p), a * lp(p), sqrt(1 - (a * lp(p))^2)]      [count, D + 2], norm sqrt 2
    query      [unit(u), beta / a, 0]                              [n, D + 2]
    row . query = cos(u, p) + beta * lp(p),    a = 1 / max_p lp(p) (1 when all are 0)

so flat and HNSW rank by the score with no second pass, and beta = 0 is the plain cosine
ranking. Why the third column: with rows [unit(p), lp(p)] of unequal norms the HNSW graph,
built by inner product, links Pins by popularity more than by content, and its recall@100
at beta = 0 fell from 0.256 to 0.195 on benchmarks/retrieval.py's truth + noise pool (exact:
0.256); with equal norms it is 0.249 (0.524 vs 0.526 exact at the fitted beta). The
manifest stores the fitted beta and a; a query may override beta.

Why faiss (faiss-cpu) rather than usearch: it adds no transitive dependency here (numpy
and packaging are already locked; usearch pulls numkong), and it has the exact index
(`IndexFlatIP`) and the graph index (`IndexHNSWFlat`) behind one interface, so small
pools can be searched exactly and large ones approximately with the same code.

An index directory is written with `derm_features.core.atomic.atomic_dir`: a reader sees the
old index of that day or the new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from derm_features.core.atomic import atomic_dir, clean_stale_tmp
from derm_features.core.provenance import ModelVersion, compatible
from derm_features.core.spec import join_key
from derm_features.core.workdir import Workdir, days_in_dir
from derm_features.serving import popularity
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


def check_beta(beta: float, manifest: Manifest) -> None:
    """Raises ValueError for a non-finite beta, or a non-zero one without popularity."""
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if beta != 0 and not manifest.has_popularity:
        raise ValueError(
            f"beta: the index of {manifest.model_version} ({manifest.day}) has no popularity "
            "column; rebuild it with `derm index` where the log is at hand, or use beta 0"
        )


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
    # popularity (derm_features.serving.popularity): the log to count positives in (None: the
    # workdir's logs/, skipped when absent), the window in days (0: no popularity column),
    # a fixed beta (None: fitted on the index day, see there) and the fit's recall cut-off
    logs: Path | None = None
    popularity_days: int = 7
    beta: float | None = None
    fit_k: int = 100

    def __post_init__(self) -> None:
        self.workdir.spec.check_model_entity(self.model, "pin")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got '{self.kind}'")
        for name in ("hnsw_m", "ef_construction", "ef_search", "fit_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.popularity_days < 0:
            raise ValueError(f"popularity_days must be >= 0, got {self.popularity_days}")
        if self.beta is not None and not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {self.beta}")
        if self.beta not in (None, 0.0) and self.popularity_days == 0:
            raise ValueError(
                f"--beta {self.beta:g} weighs popularity, which --popularity-days 0 turns off"
            )

    def popularity_log(self) -> Path | None:
        """The log popularity is counted in, or None for an index without popularity.

        Raises AnnIndexError when a log given explicitly does not exist.
        """
        if self.popularity_days == 0:
            return None
        if self.logs is not None:
            if not Path(self.logs).exists():
                raise AnnIndexError(f"--logs {self.logs}: no such file or directory")
            return Path(self.logs)
        return self.workdir.logs if self.workdir.logs.exists() else None


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


def popularity_rows(unit: np.ndarray, log_pop: np.ndarray) -> tuple[np.ndarray, float]:
    """([count, D + 2] rows [unit, a * lp, sqrt(1 - (a * lp)^2)], a = 1 / max lp).

    `unit` [count, D] unit vectors, `log_pop` [count] >= 0 (raises ValueError otherwise).
    """
    if len(log_pop) and (not np.isfinite(log_pop).all() or log_pop.min() < 0):
        raise ValueError("log popularity must be finite and >= 0")
    top = float(log_pop.max()) if len(log_pop) else 0.0
    scale = 1.0 / top if top > 0 else 1.0
    scaled = (log_pop * scale).astype(np.float32)
    completion = np.sqrt(np.clip(1.0 - scaled**2, 0.0, None))
    return np.hstack([unit, scaled[:, None], completion[:, None]]).astype(np.float32), scale


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
    # what the extra column D holds, e.g. "log(1 + click count, 2024-03-01..2024-03-07)";
    # None: no column (an index built without popularity, or before it existed)
    popularity: str | None = None
    popularity_days: int | None = None
    popularity_scale: float | None = None  # a: column D holds a * lp (module docstring)
    beta: float = 0.0  # the default weight of the popularity column at query time
    beta_fit: dict | None = None  # how beta was chosen: validation day, k, users, recalls

    @property
    def has_popularity(self) -> bool:
        return self.popularity is not None

    @property
    def columns(self) -> int:
        """Columns of the faiss index: D, or D + 2 with popularity."""
        return self.dim + (2 if self.has_popularity else 0)


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
        """D of the embeddings (the faiss index has D + 1 columns with popularity)."""
        return self.manifest.dim

    def with_beta(self, beta: float, fit: dict | None = None) -> PinIndex:
        """The same index with `beta` (and how it was chosen) as its default weight."""
        check_beta(beta, self.manifest)
        manifest = replace(self.manifest, beta=float(beta), beta_fit=fit)
        return PinIndex(self.index, self.pin_ids, manifest)

    def pin_vectors(self) -> np.ndarray:
        """[count, D] the indexed unit Pin vectors (popularity columns dropped)."""
        return self.index.reconstruct_n(0, self.index.ntotal)[:, : self.dim]

    def log_popularity(self) -> np.ndarray:
        """[count] lp(p) of each Pin (zeros without popularity)."""
        if not self.manifest.has_popularity:
            return np.zeros(self.index.ntotal, np.float32)
        column = self.index.reconstruct_n(0, self.index.ntotal)[:, self.dim]
        return column / np.float32(self.manifest.popularity_scale)

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
        log_popularity: np.ndarray | None = None,
        popularity: str | None = None,
        popularity_days: int | None = None,
    ) -> PinIndex:
        """Builds an index over `vectors` [count, D] (normalised here) of `pin_ids`.

        `log_popularity` [count] (>= 0), when given, becomes columns D and D + 1 (the
        module docstring); `popularity` then says what it holds. The index starts with
        beta = 0 (`with_beta` sets it). Raises ValueError on mismatched lengths or a
        negative log-popularity.
        """
        pin_ids = np.asarray(pin_ids, dtype=np.int64)
        unit = l2_normalise(vectors)
        if len(pin_ids) != len(unit):
            raise ValueError(f"{len(pin_ids)} pin ids for {len(unit)} vectors")
        usable = np.linalg.norm(unit, axis=1) > 0
        pin_ids, unit = pin_ids[usable], unit[usable]
        dim = unit.shape[1]
        rows, scale = unit, None
        if log_popularity is not None:
            log_popularity = np.asarray(log_popularity, dtype=np.float32)
            if log_popularity.shape != usable.shape:
                raise ValueError(f"{len(log_popularity)} popularity values for {len(usable)} Pins")
            rows, scale = popularity_rows(unit, log_popularity[usable])
            popularity = popularity or "log popularity"
        else:
            popularity = None
        chosen = kind if kind != "auto" else ("flat" if len(unit) < AUTO_FLAT_BELOW else "hnsw")
        if chosen == "flat":
            index = faiss.IndexFlatIP(rows.shape[1])
        else:
            index = faiss.IndexHNSWFlat(rows.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        index.add(np.ascontiguousarray(rows))
        hnsw = chosen == "hnsw"
        manifest = Manifest(
            model=model,
            day=day.isoformat(),
            model_version=model_version,
            count=int(len(pin_ids)),
            dim=int(dim),
            kind=chosen,
            metric="cosine" if popularity is None else "cosine + beta * log_popularity",
            hnsw_m=hnsw_m if hnsw else None,
            ef_construction=ef_construction if hnsw else None,
            ef_search=ef_search if hnsw else None,
            skipped_zero_norm=int((~usable).sum()),
            popularity=popularity,
            popularity_days=popularity_days if popularity is not None else None,
            popularity_scale=scale,
        )
        return cls(index, pin_ids, manifest)

    def retrieve(
        self, user_vectors: np.ndarray, k: int, beta: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k Pins of each user: (pin_ids [n, k] int64, scores [n, k] float32), scores
        cos(u, p) + beta * log_popularity(p) (plain cosine without a popularity column).

        `user_vectors` [n, D] are normalised here. `beta` None takes the manifest's.
        When the index holds fewer than k Pins, the tail of each row is `MISSING_PIN`
        with score -inf. Raises ValueError on k < 1, a wrong D, or a non-zero beta
        for an index without popularity.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        beta = self.manifest.beta if beta is None else float(beta)
        check_beta(beta, self.manifest)
        queries = l2_normalise(np.atleast_2d(user_vectors))
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"user vectors have D={queries.shape[1]}, the index of "
                f"{self.manifest.model_version} has D={self.dim}"
            )
        if self.manifest.has_popularity:
            extra = np.zeros((len(queries), 2), np.float32)
            extra[:, 0] = beta / self.manifest.popularity_scale
            queries = np.hstack([queries, extra])
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
        columns = manifest.columns
        if not (index.ntotal == len(pin_ids) == manifest.count and index.d == columns):
            raise AnnIndexError(
                f"index {directory} is inconsistent: {index.ntotal} vectors of {index.d} "
                f"columns, {len(pin_ids)} ids, manifest says {manifest.count} of {columns}"
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
    pin_ids = table["pin_id"].to_numpy()
    logs = config.popularity_log()
    log_pop, what = None, None
    if logs is not None:
        start, end = popularity.window(config.day, config.popularity_days)
        label = config.workdir.spec.label(config.model)
        log_pop = popularity.log_popularity(
            pin_ids, popularity.read_positives(logs, label, start, end)
        )
        what = f"log(1 + {label} count over {start}..{end})"
    index = PinIndex.from_vectors(
        pin_ids,
        embedding_matrix(table["embedding"], dim),
        model=config.model,
        day=config.day,
        model_version=str(versions[-1]),
        kind=config.kind,
        hnsw_m=config.hnsw_m,
        ef_construction=config.ef_construction,
        ef_search=config.ef_search,
        log_popularity=log_pop,
        popularity=what,
        popularity_days=config.popularity_days,
    )
    if logs is not None:
        if config.beta is not None:
            index = index.with_beta(config.beta, {"note": "given (--beta), not fitted"})
        else:
            index = index.with_beta(*fit_index_beta(config, logs, dim))
    target = wd.index(config.model, config.day)
    clean_stale_tmp(target.parent)
    with atomic_dir(target) as tmp:
        index.save(tmp)
    return index


def pool_unit_vectors(
    workdir: Workdir, model: str, entity: str, day: dt.date
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(ids [n] int64, unit vectors [n, D] without zero rows, D) of a pool, None if absent."""
    pool_dir = workdir.pool(model, entity, day)
    if not pool_dir.is_dir():
        return None
    key = join_key(entity)
    table = read_pool(pool_dir, [key, "embedding", "model_version"])
    if table.num_rows == 0:
        return None
    dim = ModelVersion.parse(table["model_version"][0].as_py()).dim
    unit = l2_normalise(embedding_matrix(table["embedding"], dim))
    usable = np.linalg.norm(unit, axis=1) > 0
    return table[key].to_numpy()[usable], unit[usable], dim


def fit_index_beta(config: IndexConfig, logs: Path, dim: int) -> tuple[float, dict]:
    """beta for the index of `config.day` (D), fitted on D with the state of D - 1.

    Users and Pins from the pools of D - 1, popularity over the window ending at D - 1,
    targets each user's positives on D (`derm_features.serving.popularity`: why this day).
    Returns (beta, what the manifest records); beta 0 with a note when a pool of D - 1
    is missing, has another D, or no pooled user has a positive on D.
    """
    day, before = config.day, config.day - dt.timedelta(days=1)
    wd, model = config.workdir, config.model
    users = pool_unit_vectors(wd, model, "user", before)
    pins = pool_unit_vectors(wd, model, "pin", before)
    base = {"validation_day": day.isoformat(), "k": config.fit_k}
    if users is None or pins is None or users[2] != dim or pins[2] != dim:
        return 0.0, {**base, "note": f"not fitted: no user and Pin pools of D={dim} for {before}"}
    start, end = popularity.window(before, config.popularity_days)
    label = wd.spec.label(model)
    log_pop = popularity.log_popularity(pins[0], popularity.read_positives(logs, label, start, end))
    acted = popularity.read_positives(logs, label, day, day).by_user()
    row_of_user = {u: i for i, u in enumerate(users[0].tolist())}
    chosen = [u for u in sorted(acted) if u in row_of_user]
    if not chosen:
        return 0.0, {**base, "note": f"not fitted: no user of the {before} pool acts on {day}"}
    row_of_pin = {p: i for i, p in enumerate(pins[0].tolist())}
    # a Pin not in the pool is a target no beta can hit: -1 keeps it in the denominator
    targets = [np.array([row_of_pin.get(p, -1) for p in acted[u].tolist()]) for u in chosen]
    queries = users[1][[row_of_user[u] for u in chosen]]
    beta, recalls = popularity.fit_beta(queries, pins[1], log_pop, targets, config.fit_k)
    return beta, {
        **base,
        "users": len(chosen),
        "recall_at_k": {str(b): r for b, r in recalls.items()},
    }


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
