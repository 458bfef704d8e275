"""The `derm` command line. Each command is a thin shell over a library function.

Heavy libraries (torch, Spark, Feast) are imported inside the commands, so `derm --help`
stays instant.
"""

from __future__ import annotations

import typer

from derm_features.commands.apply import apply_cmd
from derm_features.commands.downstream import downstream_cmd, experiment_cmd
from derm_features.commands.logs import generate_cmd, validate_logs_cmd
from derm_features.commands.materialize import materialize_cmd
from derm_features.commands.obd import convert_obd_cmd
from derm_features.commands.options import LogLevel, configure_logging
from derm_features.commands.pipeline import (
    backfill_cmd,
    daily_cmd,
    demo_cmd,
    report_cmd,
    status_cmd,
)
from derm_features.commands.serving import index_cmd, retrieve_cmd, serve_cmd
from derm_features.commands.train import infer_cmd, train_cmd

app = typer.Typer(
    name="derm",
    help=(
        "DERM embeddings on Feast: generate or validate ad logs, train the upstream towers, "
        "materialize daily embeddings into Feast (Parquet offline, Redis online)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings reflow to the terminal instead of breaking mid-line
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from derm_features import __version__

        typer.echo(f"derm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    log_level: LogLevel = typer.Option(
        LogLevel.info,
        "--log-level",
        envvar="DERM_LOG_LEVEL",
        case_sensitive=False,
        help="Notices on stderr: `info` also says what was skipped, `warning` only what needs "
        "attention, `error` only failures. Results stay on stdout.",
    ),
) -> None:
    """DERM embeddings on Feast (run `derm COMMAND --help` for each command)."""
    configure_logging(log_level.value)


def main() -> None:
    app()


for name, command in (
    ("validate-logs", validate_logs_cmd),
    ("apply", apply_cmd),
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
