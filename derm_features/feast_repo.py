"""The Feast repository of this project, bound to one work directory.

`feature_store.yaml` and `feature_repo/` read `DERM_WORKDIR`, so a work directory is
chosen by setting it. `apply` runs the real `feast apply` in a subprocess: Feast imports
`feature_repo/` once per process, and the sources' absolute paths are fixed at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from derm_features.workdir import Workdir

REPO_ROOT = Path(__file__).resolve().parent.parent


def feast_env(workdir: Workdir) -> dict[str, str]:
    return {**os.environ, "DERM_WORKDIR": str(workdir.root)}


def apply(workdir: Workdir, quiet: bool = False) -> str:
    """`feast apply` from the repository root for `workdir`; returns Feast's output."""
    workdir.root.mkdir(parents=True, exist_ok=True)
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast)] if feast.exists() else [sys.executable, "-m", "feast.cli.cli"]
    result = subprocess.run(
        [*cmd, "apply"],
        cwd=REPO_ROOT,
        env=feast_env(workdir),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"feast apply failed for workdir {workdir.root}:\n{result.stderr[-4000:]}"
        )
    if not quiet:
        print(result.stdout.strip())
    return result.stdout


def feature_store(workdir: Workdir):
    """A `feast.FeatureStore` over this repository and `workdir` (after `apply`)."""
    from feast import FeatureStore

    os.environ["DERM_WORKDIR"] = str(workdir.root)
    return FeatureStore(repo_path=str(REPO_ROOT))
