"""Command-line options shared by every `derm` command, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

WorkdirOption = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        help="Work directory for every artifact of a run (default: $DERM_WORKDIR, else ./data).",
        show_default=False,
    ),
]
LogsOption = Annotated[
    Path,
    typer.Option("--logs", help="The ad log: a Parquet file or directory (hive ds= allowed)."),
]
