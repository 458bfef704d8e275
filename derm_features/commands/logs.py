"""`derm generate` and `derm validate-logs`: the shells over the generator and the log contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from derm_features.commands.options import ConfigOption, fail, settings_or_exit


def generate_cmd(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=(
                "Directory to write into: OUT/logs/ds=YYYY-MM-DD/part-0.parquet and OUT/truth/ "
                "(default: the work directory, $DERM_WORKDIR, else ./data)."
            ),
            show_default=False,
        ),
    ] = None,
    users: Annotated[int, typer.Option("--users", help="Users in the world (not all active).")] = (
        20_000
    ),
    pins: Annotated[int, typer.Option("--pins", help="Ad Pins in the world.")] = 5_000,
    days: Annotated[
        int, typer.Option("--days", help="Days to simulate; >= 120 exercises the 90-day TTL.")
    ] = 14,
    start: Annotated[
        str, typer.Option("--start", help="First day, YYYY-MM-DD (UTC).")
    ] = "2026-01-01",
    seed: Annotated[int, typer.Option("--seed", help="Seed; same arguments, same bytes.")] = 0,
    impressions_per_day: Annotated[
        int, typer.Option("--impressions-per-day", help="Impressions (log rows) per day.")
    ] = 50_000,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace OUT/logs and OUT/truth from an earlier run."),
    ] = False,
) -> None:
    """Generate synthetic Pinterest-like ad logs that follow the log contract.

    Users with slowly drifting latent interests; Pins with category-tied content;
    power-law activity and popularity; users and Pins arrive and leave (some users
    return after more than 90 days); targeted impressions; surface, position and
    hour move CTR; conversions share part of the click affinity.
    The latent truth and its formulas go to OUT/truth/ (see `true_affinity`).
    """
    from derm_features.commands.options import fail, parse_day_option
    from derm_features.core.workdir import workdir_root
    from derm_features.synthetic import GenerateConfig, generate_logs, validate_config

    config = GenerateConfig(
        out=workdir_root(out),
        users=users,
        pins=pins,
        days=days,
        start=parse_day_option(start, "--start"),
        seed=seed,
        impressions_per_day=impressions_per_day,
        overwrite=overwrite,
    )
    try:
        validate_config(config)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(str(generate_logs(config)))


def validate_logs_cmd(
    path: Annotated[
        Path, typer.Argument(help="A Parquet file or a directory of them (hive ds= allowed).")
    ],
    config: ConfigOption = None,
) -> None:
    """Check an ad log against the contract; a rejection names file, column, row and rule.

    The label columns are the DERM spec's (click and conversion, plus any label a model
    in derm.yaml's spec: trains on). Exit code 2 for a log that breaks the contract.
    """
    from derm_features.core.logs import LogContractError, open_log

    spec = settings_or_exit(config, None).spec
    try:
        log = open_log(path, labels=spec.labels)
    except LogContractError as exc:
        raise fail(str(exc), code=2) from None
    counts = {}
    for f in log.schema.features:
        counts.setdefault(f.tower, []).append(f"{f.name}:{f.kind}")
    typer.echo(
        f"ok: {path} follows the log contract ({len(log.files)} file(s), ids {log.schema.id_type})"
    )
    for tower, feats in counts.items():
        typer.echo(f"  {tower} tower: {', '.join(feats)}")
