"""`derm report`: one self-contained HTML page with the health of every materialized day."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
from materialize_helpers import daily_table, write_daily
from typer.testing import CliRunner

from derm_features.cli import app
from materialize.job import MaterializeConfig, materialize_day

DAY0, DAY1 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def test_report_charts_health_including_cancelled_merges(workdir):
    e = np.eye(8, dtype=np.float32)
    write_daily(workdir, "ctr", "user", DAY0, daily_table([1, 2, 3], e[:3], DAY0))
    # user 1 turns to exactly the opposite direction: with w = 0.5 the average cancels
    write_daily(workdir, "ctr", "user", DAY1, daily_table([1, 2], np.stack([-e[0], e[1]]), DAY1))
    for day in (DAY0, DAY1):
        materialize_day(
            MaterializeConfig(workdir, "ctr", "user", day, heuristic="ma", w=0.5, online=False)
        )
    r = CliRunner().invoke(app, ["report", "--workdir", str(workdir.root)])
    assert r.exit_code == 0, r.output
    page = (workdir.root / "report" / "index.html").read_text()
    charts = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert len(charts) == 1 and "cancelled merges (previous value kept)" in charts[0]
    # the newest rows: day 1 counts one degenerate merge, day 0 none
    header = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    columns = re.findall(r"<th>(.*?)</th>", header)
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S).group(1)
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    degenerate = [row[columns.index("degenerate")] for row in rows]
    assert degenerate == ["0", "1"]
