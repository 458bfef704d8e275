"""Feast's vector retrieval (`retrieve_online_documents_v2`) answered by derm's Pin index:
the same Pins, in the same order, with the same scores as `derm retrieve`."""

from __future__ import annotations

import numpy as np
import pytest
from test_ann import popular_world
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.feast.repo import feature_store
from derm_features.serving.ann import IndexConfig, build_index
from materialize.kernel import embedding_matrix
from materialize.resync import resync_online
from materialize.storage import read_pool


def test_feast_document_retrieval_equals_derm_retrieve(applied_workdir):
    wd = applied_workdir
    day1, _, world = popular_world(wd)
    index = build_index(IndexConfig(wd, "ctr", day1, fit_k=5))
    assert index.manifest.beta > 0  # popularity is added back: not plain cosine
    resync_online(wd, "ctr", "pin")  # the Pins' features, read back from Redis
    pool = read_pool(wd.pool("ctr", "user", day1), ["user_id", "embedding"])
    vectors = embedding_matrix(pool["embedding"], index.dim)
    # a user whose ranking is not the Pins' id order (Feast's response builder sorts ids)
    row = next(
        r for r in range(len(vectors))
        if list(top := index.retrieve(vectors[r : r + 1], 10)[0][0]) != sorted(top)
    )  # fmt: skip
    user, vector = pool["user_id"][row].as_py(), vectors[row]

    store = feature_store(wd)
    got = store.retrieve_online_documents_v2(
        features=["ctr_pin_embedding:ctr_pin_embedding", "ctr_pin_embedding:ctr_pin_model_version"],
        query=vector.tolist(),
        top_k=10,
    ).to_dict()
    assert sorted(got) == ["ctr_pin_embedding", "ctr_pin_model_version", "distance", "pin_id"]

    cli = CliRunner().invoke(
        app, ["retrieve", "--workdir", str(wd.root), "--user", str(user), "--k", "10"]
    )
    assert cli.exit_code == 0, cli.output
    lines = [line.split("\t") for line in cli.output.splitlines() if not line.startswith("#")]
    ranked = sorted(zip(got["distance"], got["pin_id"], strict=True))  # smaller is closer
    assert [pin for _, pin in ranked] == [int(pin) for pin, _ in lines]
    np.testing.assert_allclose(
        [-d for d, _ in ranked], [float(score) for _, score in lines], atol=1e-4
    )
    pins = read_pool(wd.pool("ctr", "pin", day1), ["pin_id", "embedding"])
    by_id = dict(
        zip(pins["pin_id"].to_pylist(), embedding_matrix(pins["embedding"], index.dim), strict=True)
    )
    for pin, value in zip(got["pin_id"], got["ctr_pin_embedding"], strict=True):
        np.testing.assert_allclose(value, by_id[pin], atol=1e-6)
    assert set(got["ctr_pin_model_version"]) == {index.manifest.model_version}


def test_feast_document_retrieval_refuses_what_the_index_cannot_answer(applied_workdir):
    store = feature_store(applied_workdir)
    with pytest.raises(ValueError, match="not a derm Pin view"):
        store.retrieve_online_documents_v2(
            features=["ctr_user_embedding:ctr_user_embedding"], query=[0.0] * 8, top_k=3
        )
    with pytest.raises(ValueError, match="query vector only"):
        store.retrieve_online_documents_v2(
            features=["ctr_pin_embedding:ctr_pin_embedding"], query_string="shoes", top_k=3
        )
