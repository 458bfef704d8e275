"""`derm convert-obd`: the command-line shell over `derm_features.obd.convert_obd`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from derm_features.commands.options import PlainWorkdirOption


def convert_obd_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="The obp-0.4.1 wheel (pip download obp==0.4.1 --no-deps -d DIR), the "
            "unpacked wheel, or its obp/dataset/obd/ folder."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Log directory to write, one ds=YYYY-MM-DD partition per day "
            "(default: WORKDIR/logs).",
            show_default=False,
        ),
    ] = None,
    workdir: PlainWorkdirOption = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            help="Keep this many rows, drawn uniformly at random (default: all 60,000).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty --out.")
    ] = False,
) -> None:
    """Convert the Open Bandit Dataset sample (ZOZOTOWN, 7 days) into a derm ad log.

    Reads obp/dataset/obd/ from the wheel without installing it. OBD has no user
    id: user_id is a pseudo-user, a hash of the four user features (337 in the
    sample). pin_id is `<campaign>-<item_id>`; item_context.csv becomes pin_*
    features; position, the behaviour policy and the shown item's affinity
    become ctx_* features; the campaign is the surface; conversion is null (the
    cvr model skips itself). Prints a JSON summary: rows, clicks, users, Pins,
    rows and clicks per day. Exit 2 on a missing file or column.
    Details: derm_features/obd.py.
    """
    from derm_features.commands.options import fail
    from derm_features.core.logs import LogContractError
    from derm_features.core.workdir import Workdir
    from derm_features.obd import convert_obd

    target = out if out is not None else Workdir.resolve(workdir).logs
    try:
        summary = convert_obd(source, target, sample=sample, seed=seed, overwrite=overwrite)
    except (ValueError, LogContractError) as exc:  # ObdFormatError is a ValueError
        raise fail(str(exc)) from None
    typer.echo(json.dumps(summary.to_dict()))
