"""`derm apply`: registers the DERM Feast objects of the spec for a work directory."""

from __future__ import annotations

from derm_features.commands.options import ConfigOption, WorkdirOption, settings_or_exit


def apply_cmd(workdir: WorkdirOption = None, config: ConfigOption = None) -> None:
    """Run `feast apply` for the DERM entities, feature views and services in WORKDIR.

    The views follow the DERM spec in derm.yaml (models, TTL); after changing it, run this
    again before the next `derm daily`.
    """
    from derm_features.feast.repo import apply

    apply(settings_or_exit(config, workdir).workdir)
