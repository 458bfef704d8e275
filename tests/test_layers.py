"""The layering rule (README, "Architecture"): every module imports on its own, imports
only point down (import-linter's contracts in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("derm_features", "trainers", "materialize", "feature_repo")

# Each module is imported in a forked child of one process that has already imported the
# heavy third-party libraries, so a circular import among our own modules fails the child
# without paying torch's import time once per module.
FORK_EACH = """
import importlib, os, sys
for lib in ("numpy", "pyarrow", "pandas", "torch", "lightning", "feast", "typer", "fastapi"):
    importlib.import_module(lib)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print(",".join(failed))
"""


def project_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_every_module_imports_on_its_own():
    modules = project_modules()
    assert "derm_features.commands.train" in modules and "feature_repo.embeddings" in modules
    done = subprocess.run(
        [sys.executable, "-c", FORK_EACH, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [m for m in done.stdout.strip().split(",") if m]
    assert not failed, f"these modules fail to import on their own: {failed}\n{done.stderr}"


def test_imports_only_point_down():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout
