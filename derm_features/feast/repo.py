"""The Feast repository of this project, bound to one work directory.

`feature_store.yaml` and `feature_repo/` read `DERM_WORKDIR`, so a work directory is
chosen by setting it (in this process's environment: Feast offers no other hook).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from derm_features.core.workdir import ENTITIES, MODELS, Workdir

REPO_ROOT = Path(__file__).resolve().parents[2]


FEATURE_REPO_MODULES = ("entities", "sources", "views", "services")


def feast_objects() -> list:
    """The Feast objects defined in `feature_repo/`, freshly imported for the current workdir.

    The sources' absolute paths are fixed at import, so earlier imports are dropped first.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    for name in [m for m in sys.modules if m == "feature_repo" or m.startswith("feature_repo.")]:
        del sys.modules[name]
    objects: list = []
    for module_name in FEATURE_REPO_MODULES:
        module = importlib.import_module(f"feature_repo.{module_name}")
        for value in vars(module).values():
            is_feast = isinstance(value, DataSource | Entity | FeatureView | FeatureService)
            if is_feast and not any(value is seen for seen in objects):
                objects.append(value)
    return objects


def apply(workdir: Workdir, quiet: bool = False) -> None:
    """Registers `feature_repo/`'s objects for `workdir`: what `feast apply` does.

    `DERM_WORKDIR=<workdir> feast apply` from the repository root is equivalent (tested),
    but Feast's CLI walks every ``*.py`` under the root, the virtualenv included, which
    costs it tens of seconds; this uses the public `FeatureStore.apply` instead.
    """
    for offline_dir in (workdir.offline(m, e) for m in MODELS for e in ENTITIES):
        offline_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DERM_WORKDIR"] = str(workdir.root)
    objects = feast_objects()
    feature_store(workdir).apply(objects)
    if not quiet:
        names = sorted(getattr(o, "name", "?") for o in objects)
        print(f"feast apply: {len(objects)} objects registered in {workdir.registry}")
        print("  " + ", ".join(names))


def feature_store(workdir: Workdir):
    """A `feast.FeatureStore` over this repository and `workdir` (after `apply`)."""
    from feast import FeatureStore

    os.environ["DERM_WORKDIR"] = str(workdir.root)
    return FeatureStore(repo_path=str(REPO_ROOT))
