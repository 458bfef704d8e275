"""`derm apply`: registers the DERM Feast objects for a work directory."""

from __future__ import annotations

from derm_features.commands.options import WorkdirOption


def apply_cmd(workdir: WorkdirOption = None) -> None:
    """Run `feast apply` for the DERM entities, feature views and services in WORKDIR."""
    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import apply

    apply(Workdir.resolve(workdir))
