"""Command-line options shared by every `derm` command, declared once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

WorkdirOption = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        help="Work directory for every artifact of a run (default: $DERM_WORKDIR, else "
        "derm.yaml's workdir, else ./data).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file: the DERM spec, model, train, materialize and pipeline sections "
        "(default: ./derm.yaml when present).",
        show_default=False,
    ),
]
LogsOption = Annotated[
    Path,
    typer.Option("--logs", help="The ad log: a Parquet file or directory (hive ds= allowed)."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints `message` to stderr and returns the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def parse_day_option(value: str, flag: str) -> dt.date:
    from derm_features.core.workdir import parse_day

    try:
        return parse_day(value, flag)
    except ValueError as exc:
        raise fail(str(exc)) from None


def settings_or_exit(config: Path | None, workdir: Path | None, **flags):
    """`resolve_settings`, with any problem printed as one `error:` line and exit code 2."""
    from derm_features.commands.settings import resolve_settings

    try:
        return resolve_settings(config, workdir, **flags)
    except ValueError as exc:
        raise fail(str(exc)) from None
