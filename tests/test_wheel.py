"""derm installed from its wheel, outside the checkout.

The wheel is built from this checkout and installed into a fresh virtualenv (its
dependencies come from the project's environment through a path file, so nothing is
downloaded); every command then runs from a directory outside the checkout with no
PYTHONPATH. Two ways to use it:

- derm's default Feast config (shipped in the package): `derm apply` -> `derm materialize`
  -> a read through Feast;
- a team's own feature repository (its own project, file registry and Redis address):
  one file declares DERM's views with `repo_objects`, plain `feast apply` registers them,
  `derm materialize` runs with `FEAST_FS_YAML_FILE_PATH` pointing at the team's config and
  the team's plain `FeatureStore` reads what derm wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from materialize_helpers import daily_table, unit_rows, write_daily

from derm_features.core.workdir import Workdir
from derm_features.feast.redis_url import feast_connection_string
from derm_features.feast.repo import REPO_ROOT

pytestmark = pytest.mark.slow
DAY = dt.date(2024, 3, 1)
USERS = [1, 2, 3]
READ = """
import json, sys
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1]) if len(sys.argv) == 2 else None
if store is None:
    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import feature_store
    store = feature_store(Workdir.resolve(sys.argv[2]))
rows = [{"user_id": u} for u in (1, 2, 3)]
ref = "ctr_user_embedding:ctr_user_embedding"
out = store.get_online_features(features=[ref], entity_rows=rows)
print(json.dumps(out.to_dict()["ctr_user_embedding"]))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with derm's wheel installed (and the project's dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(root / "dist"), str(REPO_ROOT)],
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("derm-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
        check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    # after the install: pip would otherwise see the checkout's editable derm and skip it
    (packages,) = venv.glob("lib/python*/site-packages")
    (packages / "_derm_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    return venv


def clean_env() -> dict[str, str]:
    """The environment without what points at the checkout or a work directory."""
    drop = ("PYTHONPATH", "DERM_WORKDIR", "FEAST_FS_YAML_FILE_PATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(venv: Path, args: list[str], cwd: Path, redis_url: str, **env) -> str:
    done = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=clean_env() | {"REDIS_URL": redis_url} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def write_day(root: Path) -> np.ndarray:
    vectors = unit_rows(np.random.default_rng(7), len(USERS))
    write_daily(Workdir(root), "ctr", "user", DAY, daily_table(USERS, vectors, DAY))
    return vectors


def materialize(root: Path) -> list[str]:
    return ["derm", "materialize", "--workdir", str(root), "--model", "ctr", "--entity", "user",
            "--date", DAY.isoformat()]  # fmt: skip


def test_the_wheel_is_self_contained(venv, tmp_path, redis_url):
    where = run(
        venv, ["python", "-c", "import derm_features, trainers, materialize as m; "
               "from derm_features.feast.repo import feature_store_yaml as f; "
               "print(derm_features.__file__, m.__file__, f(), f().is_file())"],
        tmp_path, redis_url,
    ).split()  # fmt: skip
    assert all(path.startswith(str(venv)) for path in where[:3]), where
    assert where[3] == "True"  # the default Feast config ships inside the package
    version = run(venv, ["derm", "--version"], tmp_path, redis_url)
    assert "0.1.0" in version


def test_derm_from_the_wheel_applies_materializes_and_feast_reads_it(venv, tmp_path, redis_url):
    root = tmp_path / "wd"
    out = run(venv, ["derm", "apply", "--workdir", str(root)], tmp_path, redis_url)
    assert f"registered in {root / 'registry.db'}" in out
    vectors = write_day(root)
    run(venv, materialize(root), tmp_path, redis_url)
    got = json.loads(run(venv, ["python", "-c", READ, "-", str(root)], tmp_path, redis_url))
    assert np.allclose(np.array(got, dtype=np.float32), vectors, atol=1e-6)


def test_a_teams_own_feast_repo_declares_derm_views_and_reads_what_derm_wrote(
    venv, tmp_path, redis_url
):
    team, root = tmp_path / "team_repo", tmp_path / "derm_data"
    team.mkdir()
    (team / "feature_store.yaml").write_text(
        "project: ads\nprovider: local\nregistry: registry.db\n"
        "offline_store:\n  type: duckdb\n"
        f"online_store:\n  type: redis\n  connection_string: {feast_connection_string(redis_url)}\n"
        "entity_key_serialization_version: 3\n"
    )
    (team / "derm_embeddings.py").write_text(
        "from derm_features.feast.definitions import repo_objects\n\n"
        f"globals().update(repo_objects(workdir={str(root)!r}))\n"
    )
    feast = ["python", "-c", "import sys; from feast.cli.cli import cli; sys.exit(cli())"]
    out = run(venv, [*feast, "apply"], team, redis_url)
    assert "ctr_user_embedding" in out
    vectors = write_day(root)
    config = {"FEAST_FS_YAML_FILE_PATH": str(team / "feature_store.yaml")}
    run(venv, materialize(root), tmp_path, redis_url, **config)
    assert not (root / "registry.db").exists()  # derm used the team's registry
    got = json.loads(run(venv, ["python", "-c", READ, str(team)], tmp_path, redis_url))
    assert np.allclose(np.array(got, dtype=np.float32), vectors, atol=1e-6)
