"""Command-line options shared by every `derm` command, declared once."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


def _workdir_option(default: str):
    return Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help=f"Work directory for every artifact of a run (default: {default}).",
            show_default=False,
        ),
    ]


WorkdirOption = _workdir_option("$DERM_WORKDIR, else derm.yaml's workdir, else ./data")
# demo, experiment and convert-obd run on the default spec and never read derm.yaml
PlainWorkdirOption = _workdir_option("$DERM_WORKDIR, else ./data; this command does not read "
                                     "derm.yaml")  # fmt: skip
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file: the DERM spec, model, train, materialize and pipeline sections "
        "(default: ./derm.yaml when present).",
        show_default=False,
    ),
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress bars on stderr (default: on when stderr is a terminal, so off in a "
        "scheduler's log).",
        show_default=False,
    ),
]


def show_progress(flag: bool | None) -> bool:
    """`--progress/--no-progress` as given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


LogsOption = Annotated[
    Path,
    typer.Option("--logs", help="The ad log: a Parquet file or directory (hive ds= allowed)."),
]


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class _StderrHandler(logging.StreamHandler):
    """Writes to the current `sys.stderr`, not the one of the moment it was configured (a
    test runner or a notebook swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Notice(logging.Formatter):
    """``warning: ...`` / ``error: ...`` as derm's own messages read; info as it is."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


def configure_logging(level: str = "info") -> None:
    """Sends derm's notices (logger ``derm``; ``info`` says what was skipped, ``warning``
    what needs attention) and Python warnings to stderr at `level`; Feast's, Lightning's
    and Spark's own loggers at `level` or ``warning``, whichever is stricter. stdout keeps
    only each command's result."""
    threshold = getattr(logging, level.upper())
    handler = _StderrHandler()
    handler.setFormatter(_Notice())
    for name in ("derm", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]  # idempotent: one handler however often it is called
        logger.setLevel(threshold)
    logging.captureWarnings(True)
    for name in ("feast", "lightning", "py4j"):
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints `message` to stderr and returns the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def require_workdir(root: Path, why: str = "") -> None:
    """Raises `fail` naming --workdir when `root` is not a directory: a mistyped --workdir
    is refused before anything (a lock file, say) would create it. `why`: appended."""
    if not root.is_dir():
        raise fail(f"--workdir {root}: no such work directory{why}")


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


def run_or_exit(fn, rerun: str | None = None):
    """Runs `fn`, turning the errors users can fix into one clear line: exit code 2 for bad
    input (a ValueError: settings, the log contract, a refused materialization), 3 when
    Redis is unreachable, 4 when another run holds the lock on the same state.

    rerun: the command that resumes after a Redis failure (its message then keeps only its
    first line and says to re-run that); None keeps the whole message.
    """
    try:
        return fn()
    except (ValueError, FileNotFoundError) as exc:  # LogContractError is a ValueError
        raise fail(str(exc)) from None
    except RuntimeError as exc:
        # imported only now: a bad flag must fail before Feast and Arrow are even loaded
        from derm_features.core.locks import LockHeld
        from derm_features.feast.online_store import OnlineStoreUnavailable
        from materialize.job import OnlineError

        if isinstance(exc, OnlineStoreUnavailable) and rerun:
            raise fail(f"{exc}; start it (or pass --no-online) and re-run `{rerun}`", 3) from None
        if isinstance(exc, OnlineStoreUnavailable | OnlineError):
            if rerun is None:
                raise fail(str(exc), 3) from None
            first = str(exc).splitlines()[0]
            raise fail(f"{first}; re-run `{rerun}` once Redis is back", 3) from None
        if isinstance(exc, LockHeld):
            raise fail(str(exc), 4) from None
        raise
