"""`derm serve`: embeddings and Pin retrieval over HTTP (paper appendix C.3).

    POST /embeddings   {"user_ids": [..], "pin_ids": [..], "views": [..]}
                       -> {"views": {view: {"values": [[..]..], "found": [..]}}}
    POST /retrieve     {"user_id": U | "vector": [..], "k": 100, "model": "ctr", "beta": b?}
                       -> {"pin_ids": [..], "scores": [..], "beta": .., "model_version": ..,
                           "index_day": ..}; scores cos(u, p) + beta * log_pop(p), beta the
                           request's, else `derm serve --beta`, else the index manifest's
    GET  /health       Redis reachable, indexes loaded, their versions (503 when degraded)
    GET  /metrics      Prometheus text format: requests, latency, Redis errors
                       (`derm_features.serving.metrics`)

Every error is JSON ``{"error": message, "field": name-or-null}``: 422 for bad input
(the message names the field), 413 for a body over `max_body_bytes`, 404 for an
unknown user, 503 when Redis is unavailable (the message names the redacted address).

Why a FastAPI app of our own rather than `feast serve` extended: `feast serve`
(`feast.feature_server`) also exposes writes (push, write-to-online-store, materialize)
that a ranking-side service must not offer, it has no hook to bound request sizes,
and its read path decodes one protobuf per value; adding routes would mean patching
its app at import. FastAPI is already installed as Feast's dependency, so this costs
no new package, and the reads go through `EmbeddingReader`, which returns the same
values as Feast's own `get_online_features` (tested there).

Redis address, password and TLS come only from `REDIS_URL` (`derm_features.feast.redis_url`);
logs and errors show `redacted()` addresses only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from derm_features.core.spec import view_name
from derm_features.core.workdir import Workdir
from derm_features.feast.online_store import (
    OnlineStoreUnavailable,
    unavailable_as_clear_error,
)
from derm_features.serving.ann import AnnIndexError, PinIndex, check_beta, load_index
from derm_features.serving.metrics import RequestMetrics, serve_metrics

log = logging.getLogger("derm.serve")

MAX_IDS = 10_000  # user_ids + pin_ids of one request
MAX_VIEWS = 64  # views named in one request (the spec's are checked by name)
MAX_K = 1_000
MAX_DIM = 4_096  # longest query vector accepted
MAX_BODY_BYTES = 1 << 20  # 10k int64 ids in JSON take ~200 KB; a D=4096 vector ~80 KB
DRAIN_LIMIT_BYTES = 64 << 20  # past this, an oversized body is cut off, not read to the end
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


@dataclass(frozen=True)
class ServeConfig:
    """What `derm serve` decides: where to listen, what to load, how much to accept."""

    workdir: Workdir
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 8000
    # the spec's models whose newest index is loaded, if there is one (None: all of them)
    models: tuple[str, ...] | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    access_log: bool = False
    beta: float | None = None  # popularity weight for every query; None: each manifest's
    workers: int = 1  # processes answering on the port (more than one: gunicorn forks them)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[Int64] = Field(default_factory=list, max_length=MAX_IDS)
    pin_ids: list[Int64] = Field(default_factory=list, max_length=MAX_IDS)
    views: list[str] = Field(min_length=1, max_length=MAX_VIEWS)


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Int64 | None = None
    vector: list[FiniteFloat] | None = Field(default=None, min_length=1, max_length=MAX_DIM)
    k: int = Field(default=100, ge=1, le=MAX_K)
    model: str = Field(default="ctr", pattern=r"^[a-z][a-z0-9]*$")  # a model of the spec
    beta: FiniteFloat | None = None


class BadRequest(Exception):
    """Input that passed the schema but not the service's rules; answered as JSON."""

    def __init__(self, status: int, field_name: str | None, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field_name, message


@dataclass
class Services:
    """What a running app holds: the Feast store, the reader and the loaded indexes."""

    store: Any
    reader: Any
    redis_address: str
    indexes: dict[str, PinIndex] = field(default_factory=dict)
    # /embeddings reads through this redis.asyncio client, made in the worker's event loop
    # on its first request (False: none, a Redis Cluster or Sentinel; read in the pool)
    async_client: Any = None


def json_response(payload: dict, status: int = 200) -> Response:
    """Serialised by orjson, NumPy arrays included. An embedding is written as float32 in
    its shortest round-trip form: 100 Pins x 2 views of 256-d take 1 ms and 0.56 MB, where
    `json.dumps` of `tolist()` floats took 27 ms and 1.06 MB (the float64 digits of a
    float32), the largest cost of a request. FastAPI's own encoder is slower still."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json")


def error_response(status: int, message: str, field_name: str | None = None) -> Response:
    return json_response({"error": message, "field": field_name}, status)


# ---------------------------------------------------------------- request-size bound


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413 before anything parses it.

    A declared Content-Length is checked first; otherwise (chunked) the body is read up
    to the limit and replayed to the app, so memory per request stays bounded.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, "Content-Length is not a number", "body")
                return
            if int(declared) > self.max_bytes:
                await self._drain(receive)
                await self._too_large(send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                if message.get("more_body"):
                    await self._drain(receive)
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _drain(self, receive) -> None:
        """Reads and drops an oversized body (up to `DRAIN_LIMIT_BYTES`), so a client
        that sends it whole reads the 413 instead of a broken pipe; memory stays flat."""
        drained = 0
        while drained <= DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            drained += len(message.get("body", b""))

    async def _too_large(self, send) -> None:
        await _send_json(
            send, 413, f"request body is larger than {self.max_bytes} bytes", "body", close=True
        )


async def _send_json(send, status: int, message: str, field_name: str, close=False) -> None:
    body = json.dumps({"error": message, "field": field_name}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:  # the unread rest of the body makes the connection unusable
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the app


def open_services(config: ServeConfig) -> Services:
    """The Feast store, a reader (its own fail-fast Redis client) and the indexes."""
    from derm_features.feast.online_store import EmbeddingReader
    from derm_features.feast.redis_url import redacted
    from derm_features.feast.repo import feature_store, has_registry

    if not has_registry(config.workdir):
        raise AnnIndexError(
            f"no Feast registry for {config.workdir.root}: run `derm apply --workdir ...` first"
        )
    store = feature_store(config.workdir)
    indexes = {}
    for model in config.models or config.workdir.spec.model_names:
        try:
            indexes[model] = load_index(config.workdir, model)
        except AnnIndexError as exc:
            log.warning("retrieval for %s disabled: %s", model, exc)
    dims = {
        view_name(model, entity): index.dim
        for model, index in indexes.items()
        for entity in ("user", "pin")
    }
    reader = EmbeddingReader(store, dims=dims)  # its own fail-fast Redis client
    for view in known_views(config.workdir):
        reader.layout(view)  # resolve from the registry once, not on the first request
    return Services(store, reader, redacted(), indexes)


def known_views(workdir: Workdir) -> list[str]:
    """The feature views of the work directory's DERM spec."""
    return [view for _, _, view in workdir.spec.views()]


def query_beta(body_beta: float | None, config: ServeConfig, index: PinIndex) -> float:
    """The beta of one query: the request's, else the service's, else the manifest's.
    Raises BadRequest (422, field beta) for a non-zero beta on an index without popularity."""
    beta = next(b for b in (body_beta, config.beta, index.manifest.beta) if b is not None)
    try:
        check_beta(beta, index.manifest)
    except ValueError as exc:
        raise BadRequest(422, "beta", str(exc)) from None
    return float(beta)


def create_app(config: ServeConfig, services: Services | None = None) -> FastAPI:
    """The FastAPI app; `services` default to `open_services(config)` at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = services or open_services(config)
        loaded = {m: i.manifest.model_version for m, i in app.state.services.indexes.items()}
        log.info("derm serve: Redis %s, indexes %s", app.state.services.redis_address, loaded)
        yield

    app = FastAPI(
        title="derm serve",
        description="DERM user and Pin embeddings from Redis, Pin retrieval from the ANN index.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.state.metrics = metrics = serve_metrics()
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last: outermost, sees the 413s
    _add_error_handlers(app)

    def services_of(request: Request) -> Services:
        return request.app.state.services

    # /embeddings reads Redis with asyncio, so the event loop serves other requests while
    # Redis answers, without the thread pool's hand-offs (see `embeddings_read`). The other
    # endpoints are plain `def`: faiss and the sync client block, so FastAPI runs them in
    # its thread pool and the event loop keeps accepting requests.
    @app.post("/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        s = services_of(request)
        _check_ids(body)
        unknown = [v for v in body.views if v not in known_views(config.workdir)]
        if unknown:
            raise BadRequest(
                422, "views", f"views: unknown {unknown}; known: {known_views(config.workdir)}"
            )
        read = await embeddings_read(
            s, body.user_ids, body.pin_ids, list(dict.fromkeys(body.views))
        )
        return json_response(
            {
                "views": {
                    view: {"values": values, "found": found}
                    for view, (values, found) in read.items()
                }
            }
        )

    @app.post("/retrieve")
    def retrieve(body: RetrieveRequest, request: Request) -> Response:
        s = services_of(request)
        if body.model not in config.workdir.spec.models:
            models = ", ".join(config.workdir.spec.model_names)
            raise BadRequest(422, "model", f"model: '{body.model}' is not one of {models}")
        index = s.indexes.get(body.model)
        if index is None:
            raise BadRequest(404, "model", f"model: no Pin index loaded for '{body.model}'")
        vector, source = _query_vector(s, body, index)
        beta = query_beta(body.beta, config, index)
        pin_ids, scores = index.retrieve(vector[None, :], body.k, beta)
        keep = pin_ids[0] >= 0
        return json_response(
            {
                "model": body.model,
                "model_version": index.manifest.model_version,
                "index_day": index.manifest.day,
                "source": source,
                "beta": beta,
                "pin_ids": pin_ids[0][keep],
                "scores": scores[0][keep],
            }
        )

    @app.get("/health")
    def health(request: Request) -> Response:
        s = services_of(request)
        reachable, error = True, None
        try:
            with unavailable_as_clear_error(s.store, "health check"):
                s.reader.client.ping()
        except OnlineStoreUnavailable as exc:
            reachable, error = False, str(exc)
            metrics.redis_error(request.url.path)
        ok = reachable and bool(s.indexes)
        payload = {
            "status": "ok" if ok else "degraded",
            "redis": {"address": s.redis_address, "reachable": reachable, "error": error},
            "indexes": {m: asdict(i.manifest) for m, i in s.indexes.items()},
            "views": known_views(config.workdir),
        }
        return json_response(payload, 200 if ok else 503)

    @app.get("/metrics")
    def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return app


async def embeddings_read(s: Services, user_ids, pin_ids, views: list[str]) -> dict:
    """`EmbeddingReader.read` for /embeddings: through the worker's asyncio client, made on
    its first request, or in the thread pool where there is none (a Redis Cluster)."""
    from starlette.concurrency import run_in_threadpool

    from derm_features.feast.online_store import dedicated_async_redis_client

    if s.async_client is None:
        with unavailable_as_clear_error(s.store, "connecting the embedding reader"):
            s.async_client = await dedicated_async_redis_client(s.store) or False
    if s.async_client is False:
        return await run_in_threadpool(s.reader.read, user_ids, pin_ids, views)
    return await s.reader.read_async(s.async_client, user_ids, pin_ids, views)


def _check_ids(body: EmbeddingsRequest) -> None:
    total = len(body.user_ids) + len(body.pin_ids)
    if total > MAX_IDS:
        raise BadRequest(
            422, "pin_ids", f"user_ids + pin_ids: {total} ids, at most {MAX_IDS} per request"
        )


def _query_vector(s: Services, body: RetrieveRequest, index: PinIndex) -> tuple[np.ndarray, str]:
    """The user's vector (from Redis, or given) and where it came from."""
    if (body.user_id is None) == (body.vector is None):
        raise BadRequest(422, "user_id", "give exactly one of 'user_id' or 'vector'")
    if body.vector is not None:
        if len(body.vector) != index.dim:
            raise BadRequest(
                422, "vector", f"vector: {len(body.vector)} values, the index has D={index.dim}"
            )
        return np.asarray(body.vector, dtype=np.float32), "request"
    view = view_name(body.model, "user")
    values, found = s.reader.read([body.user_id], [], [view])[view]
    if not found[0]:
        raise BadRequest(404, "user_id", f"user_id {body.user_id} has no {view} online")
    return values[0], "online"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":  # its loc is a character offset
            loc = []
        field_name = loc[0] if loc else "body"
        where = ".".join(loc) or "body"
        # The message never echoes the input: it may be huge, or a client's secret.
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}", field_name)

    @app.exception_handler(BadRequest)
    async def bad(_: Request, exc: BadRequest) -> Response:
        return error_response(exc.status, exc.message, exc.field)

    @app.exception_handler(OnlineStoreUnavailable)
    async def unavailable(request: Request, exc: OnlineStoreUnavailable) -> Response:
        log.warning("%s", exc)
        request.app.state.metrics.redis_error(request.url.path)
        return error_response(503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); see the service log")


def run(config: ServeConfig, metrics_dir_to_remove: str | None = None) -> None:
    """Serves until interrupted.

    One worker: uvicorn in this process (all but /embeddings use its thread pool). Several:
    gunicorn forks `config.workers` uvicorn workers after the services are open, so the
    indexes are loaded once and shared copy-on-write (as `feast serve` runs its workers).
    Several workers need prometheus_client's multi-process mode (PROMETHEUS_MULTIPROC_DIR
    set before it is imported; `derm serve` sees to it); RuntimeError without it.
    `metrics_dir_to_remove`: that directory is removed when the service stops.
    """
    import shutil
    import signal

    from derm_features.serving.metrics import MULTIPROC_ENV, multiprocess

    owner = os.getpid()
    # SIGTERM while the indexes load, and uvicorn's re-raised SIGTERM after its graceful
    # shutdown, would end the process before `finally`; this handler makes either an
    # ordinary exit (status 0). gunicorn's arbiter installs handlers of its own.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if config.workers > 1 and not multiprocess():
            raise RuntimeError(f"{config.workers} workers need {MULTIPROC_ENV} set")
        services = open_services(config)  # fails here, before binding, on a missing registry
        app = create_app(config, services)
        if config.workers == 1:
            import uvicorn

            uvicorn.run(
                app,
                host=config.host,
                port=config.port,
                access_log=config.access_log,
                log_level="info",
                timeout_graceful_shutdown=5,
            )
        else:
            _run_gunicorn(app, config)
    finally:
        if os.getpid() == owner:  # forked workers exit through here
            signal.signal(signal.SIGTERM, previous)
            if metrics_dir_to_remove:
                shutil.rmtree(metrics_dir_to_remove, ignore_errors=True)


def _run_gunicorn(app: FastAPI, config: ServeConfig) -> None:
    from gunicorn.app.base import BaseApplication

    options = {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        "worker_class": "uvicorn_worker.UvicornWorker",
        "accesslog": "-" if config.access_log else None,
        "graceful_timeout": 5,
    }

    class Workers(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> FastAPI:
            return app  # built before the fork: every worker shares the loaded indexes

    Workers().run()
