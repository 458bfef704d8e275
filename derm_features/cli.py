"""The `derm` command line. Each command is a thin shell over a library function.

Heavy libraries (torch, Spark, Feast) are imported inside the commands, so `derm --help`
stays instant.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="derm",
    help=(
        "DERM embeddings on Feast: generate or validate ad logs, train the upstream towers, "
        "materialize daily embeddings into Feast (Parquet offline, Redis online)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

WorkdirOption = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        help="Work directory for every artifact of a run (default: $DERM_WORKDIR, else ./data).",
        show_default=False,
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints `message` to stderr and returns the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def parse_day_option(value: str, flag: str) -> dt.date:
    from derm_features.workdir import parse_day

    try:
        return parse_day(value, flag)
    except ValueError as exc:
        raise fail(str(exc)) from None


@app.command("validate-logs")
def validate_logs_cmd(
    path: Annotated[
        Path, typer.Argument(help="A Parquet file or a directory of them (hive ds= allowed).")
    ],
) -> None:
    """Check an ad log against the contract; a rejection names file, column, row and rule."""
    from derm_features.logs import LogContractError, open_log

    try:
        log = open_log(path)
    except LogContractError as exc:
        raise fail(str(exc), code=1) from None
    counts = {}
    for f in log.schema.features:
        counts.setdefault(f.tower, []).append(f"{f.name}:{f.kind}")
    typer.echo(
        f"ok: {path} follows the log contract ({len(log.files)} file(s), ids {log.schema.id_type})"
    )
    for tower, feats in counts.items():
        typer.echo(f"  {tower} tower: {', '.join(feats)}")


@app.command("apply")
def apply_cmd(workdir: WorkdirOption = None) -> None:
    """Run `feast apply` for the DERM entities, feature views and services in WORKDIR."""
    from derm_features.feast_repo import apply
    from derm_features.workdir import Workdir

    apply(Workdir.resolve(workdir))


def main() -> None:
    app()


# Commands that live in the other packages, one line each, so `derm --help` lists them all.
# Each module keeps its heavy imports inside the command body.
