"""The `derm` command line. Each command is a thin shell over a library function.

Heavy libraries (torch, Spark, Feast) are imported inside the commands, so `derm --help`
stays instant.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from derm_features.cli_options import WorkdirOption

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


# Commands that live in the other packages, registered here so `derm --help` lists them all.
# Each module keeps its heavy imports (torch, Spark, Feast) inside the command bodies.
from derm_features.generate_cli import generate_cmd  # noqa: E402
from derm_features.obd_cli import convert_obd_cmd  # noqa: E402
from derm_features.pipeline_cli import (  # noqa: E402
    backfill_cmd,
    daily_cmd,
    demo_cmd,
    report_cmd,
    status_cmd,
)
from derm_features.serving_cli import index_cmd, retrieve_cmd, serve_cmd  # noqa: E402
from materialize.cli import materialize_cmd  # noqa: E402
from trainers.cli import infer_cmd, train_cmd  # noqa: E402
from trainers.downstream.cli import downstream_cmd, experiment_cmd  # noqa: E402

for name, command in (
    ("generate", generate_cmd),
    ("convert-obd", convert_obd_cmd),
    ("train", train_cmd),
    ("infer", infer_cmd),
    ("materialize", materialize_cmd),
    ("daily", daily_cmd),
    ("backfill", backfill_cmd),
    ("status", status_cmd),
    ("index", index_cmd),
    ("retrieve", retrieve_cmd),
    ("serve", serve_cmd),
    ("downstream", downstream_cmd),
    ("experiment", experiment_cmd),
    ("report", report_cmd),
    ("demo", demo_cmd),
):
    app.command(name)(command)

if __name__ == "__main__":
    main()
