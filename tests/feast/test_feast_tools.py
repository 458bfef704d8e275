"""Feast's own tools on derm's objects, with Feast's defaults: `feast ui` and `feast serve`.

Each starts as a real server from the repository root (the example feature repository) on
a free loopback port, over a work directory `derm apply` registered.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from derm_features.core.processes import stop_processes
from derm_features.feast.online_store import push_rows
from derm_features.feast.repo import REPO_ROOT, feature_store

pytestmark = pytest.mark.slow
FEAST = str(Path(sys.executable).with_name("feast"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], workdir, redis_url: str) -> subprocess.Popen:
    env = {**os.environ, "DERM_WORKDIR": str(workdir.root), "REDIS_URL": redis_url}
    return subprocess.Popen(
        [FEAST, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def request(url: str, body: dict | None = None, wait_s: float = 120) -> tuple[int, bytes]:
    """The first answer within `wait_s` (the server may still be starting)."""
    data = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            req = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    stop_processes([process])


def test_feast_ui_starts_and_lists_derms_views_and_services(applied_workdir, redis_url):
    port = free_port()
    ui = start(["ui", "--host", "127.0.0.1", "--port", str(port)], applied_workdir, redis_url)
    try:
        status, _ = request(f"http://127.0.0.1:{port}/")
        assert status == 200
        _, body = request(f"http://127.0.0.1:{port}/api/v1/feature_views?project=derm")
        views = {v["spec"]["name"]: v["spec"] for v in json.loads(body)["featureViews"]}
        assert set(views) == {f"{m}_{e}_embedding" for m in ("ctr", "cvr") for e in ("user", "pin")}
        assert [f["name"] for f in views["ctr_pin_embedding"]["features"]] == [
            "ctr_pin_embedding", "ctr_pin_last_seen", "ctr_pin_model_version",
        ]  # fmt: skip
        _, body = request(f"http://127.0.0.1:{port}/api/v1/feature_services?project=derm")
        services = {s["spec"]["name"] for s in json.loads(body)["featureServices"]}
        assert services == {"ctr_ranking", "cvr_ranking"}
    finally:
        stop(ui)


def test_feast_serve_answers_a_feature_service_with_default_names(applied_workdir, redis_url):
    """POST /get-online-features with `ctr_ranking` (four views), Feast's defaults: the
    response names each feature once (no collision) and holds what derm pushed."""
    import numpy as np
    import pyarrow as pa

    store = feature_store(applied_workdir)
    stamp = dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
    for view, entity, value in (
        ("ctr_user_embedding", "user", 0.5),
        ("ctr_pin_embedding", "pin", 2.0),
    ):
        push_rows(
            store,
            view,
            pa.table(
                {
                    f"{entity}_id": pa.array([7], pa.int64()),
                    "embedding": pa.array([np.full(4, value, np.float32)], pa.list_(pa.float32())),
                    "last_seen": pa.array([stamp], pa.timestamp("us", "UTC")),
                    "model_version": ["ctr-0123abcd-d4@2024-03-01"],
                    "event_timestamp": pa.array([stamp], pa.timestamp("us", "UTC")),
                }
            ),
        )
    port = free_port()
    server = start(["serve", "-h", "127.0.0.1", "-p", str(port)], applied_workdir, redis_url)
    try:
        status, body = request(
            f"http://127.0.0.1:{port}/get-online-features",
            {"feature_service": "ctr_ranking", "entities": {"user_id": [7], "pin_id": [7]}},
        )
        assert status == 200
        answer = json.loads(body)
        names = answer["metadata"]["feature_names"]
        assert len(names) == len(set(names)) and "ctr_user_embedding" in names
        values = dict(zip(names, answer["results"], strict=True))
        assert values["ctr_user_embedding"]["values"] == [[0.5] * 4]
        assert values["ctr_pin_embedding"]["values"] == [[2.0] * 4]
        assert values["ctr_pin_model_version"]["values"] == ["ctr-0123abcd-d4@2024-03-01"]
    finally:
        stop(server)
