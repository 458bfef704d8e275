"""`derm report`: one self-contained HTML page about a work directory, read as a person would."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import numpy as np
import pytest
from materialize_helpers import daily_table, write_daily
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.jobs.report import upstream_figure, upstream_runs
from materialize.job import MaterializeConfig, materialize_day

DAY0, DAY1 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CSV_HEADER = (
    "epoch,step,train/loss,val/click/pr_auc,val/click/roc_auc,"
    "val/conversion/pr_auc,val/conversion/roc_auc"
)
LIFT = """### CTR task, eval 2026-01-13..2026-01-14

Eval rows 60000, positives 1200; lifts paired against `no_derm`. <script>alert(1)</script>

| model | ROC-AUC | PR-AUC | log loss | ROC-AUC lift % | PR-AUC lift % |
| --- | --- | --- | --- | --- | --- |
| no_derm | 0.6012 [0.5950, 0.6080] | 0.0301 [0.0290, 0.0312] | 0.0950 | (reference) | (reference) |
| derm | 0.6123 [0.6060, 0.6190] | 0.0322 | 0.0941 | +1.85 [+1.10, +2.60] | +6.98 |
"""


def health_two_days(workdir) -> None:
    e = np.eye(8, dtype=np.float32)
    write_daily(workdir, "ctr", "user", DAY0, daily_table([1, 2, 3], e[:3], DAY0))
    # user 1 turns to exactly the opposite direction: with w = 0.5 the average cancels
    write_daily(workdir, "ctr", "user", DAY1, daily_table([1, 2], np.stack([-e[0], e[1]]), DAY1))
    for day in (DAY0, DAY1):
        materialize_day(
            MaterializeConfig(workdir, "ctr", "user", day, heuristic="ma", w=0.5, online=False)
        )


def cvr_runs(workdir) -> None:
    """A window fit (several loss points) and a daily run with a single loss point; both
    log the click AUC next to the cvr model's own conversion AUC."""
    root = workdir.metrics / "upstream" / "cvr"
    rows = {
        "2026-01-01_2026-01-07": ["0,9,0.9,,,,", "0,19,0.8,,,,", "0,19,,0.03,0.616,0.004,0.584"],
        "2026-01-08": ["0,9,0.7,,,,", "0,9,,0.03,0.652,0.005,0.571"],
    }
    for run, lines in rows.items():
        (root / run).mkdir(parents=True)
        (root / run / "metrics.csv").write_text("\n".join([CSV_HEADER, *lines]) + "\n")


def report_page(workdir) -> str:
    r = CliRunner().invoke(app, ["report", "--workdir", str(workdir.root)])
    assert r.exit_code == 0, r.output
    return (workdir.root / "report" / "index.html").read_text()


def tables(page: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows of cell texts) of every HTML table of the page."""
    found = []
    for table in re.findall(r"<table>(.*?)</table>", page, re.S):
        header = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
        body = re.search(r"<tbody>(.*?)</tbody>", table, re.S).group(1)
        rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
        found.append((header, [re.findall(r"<td(?: [^>]*)?>(.*?)</td>", row) for row in rows]))
    return found


def test_report_charts_health_and_stability_leaving_undefined_values_out(workdir):
    health_two_days(workdir)
    page = report_page(workdir)
    charts = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert len(charts) == 2
    assert "cancelled merges (previous value kept)" in charts[0]
    assert "ctr/user: day-to-day cosine" in charts[1]
    [(columns, rows)] = tables(page)
    assert columns[:3] == ["day", "model", "entity"]
    assert '<div class="scroll"><table>' in page  # the wide table scrolls, not the page
    cell = {name: [row[columns.index(name)] for row in rows] for name in columns}
    assert cell["day"] == ["2024-03-01", "2024-03-02"]
    assert cell["degenerate"] == ["0", "1"]  # day 1 cancelled user 1's merge
    # no pool before day 0: coverage undefined there (not 0); day 1 held both active users
    assert cell["coverage"] == ["–", "1"]
    assert cell["cosine_p50"][0] == "–"  # nothing was updated on day 0


def test_training_plots_each_models_own_label_and_marks_single_points(workdir):
    cvr_runs(workdir)
    runs = upstream_runs(workdir, "cvr")
    assert [r["label"] for r in runs] == ["conversion", "conversion"]
    assert [r["roc_auc"] for r in runs] == [0.584, 0.571]  # not the click AUC (0.616, 0.652)

    fig = upstream_figure("cvr", runs)
    ax_loss, ax_auc = fig.axes
    loss_lines = [line for line in ax_loss.lines if len(line.get_xdata()) and line.get_ls() == "-"]
    single = [line for line in loss_lines if len(line.get_xdata()) == 1]
    assert len(single) == 1 and single[0].get_marker() == "o"  # visible without a line
    assert "conversion" in ax_auc.get_title()
    assert list(ax_auc.lines[0].get_ydata()) == [0.584, 0.571]

    page = report_page(workdir)
    [(columns, rows)] = tables(page)
    assert columns == ["run", "label", "val ROC-AUC", "val PR-AUC"]
    assert rows == [
        ["2026-01-01_2026-01-07", "conversion", "0.584", "0.004"],
        ["2026-01-08", "conversion", "0.571", "0.005"],
    ]


def test_a_model_of_the_settings_spec_plots_its_own_label(workdir, tmp_path):
    cvr_runs(workdir)
    (workdir.metrics / "upstream" / "cvr").rename(workdir.metrics / "upstream" / "buy")
    settings = tmp_path / "derm.yaml"
    settings.write_text("spec:\n  models: {ctr: click, buy: conversion}\n")
    r = CliRunner().invoke(
        app, ["report", "--workdir", str(workdir.root), "--config", str(settings)]
    )
    assert r.exit_code == 0, r.output
    [(_, rows)] = tables((workdir.root / "report" / "index.html").read_text())
    assert [row[1:3] for row in rows] == [["conversion", "0.584"], ["conversion", "0.571"]]
    # without the settings, "buy" is no model of the default spec and logs two labels:
    # no AUC is guessed
    runs = upstream_runs(workdir, "buy")  # the fixture's work directory: the default spec
    assert [(r["label"], r["roc_auc"]) for r in runs] == [(None, None), (None, None)]


def test_lift_tables_are_html_tables_with_raw_html_escaped(workdir):
    (workdir.root / "demo").mkdir()
    (workdir.root / "demo" / "lift.md").write_text(LIFT)
    page = report_page(workdir)
    [(columns, rows)] = tables(page)
    assert columns[:3] == ["model", "ROC-AUC", "PR-AUC"]
    assert rows[1][0] == "derm" and rows[1][4] == "+1.85 [+1.10, +2.60]"
    assert "<h3>CTR task, eval 2026-01-13..2026-01-14</h3>" in page
    assert "| --- |" not in page  # no Markdown left raw
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.skipif(CHROMIUM is None, reason="headless check needs Debian's chromium on PATH")
def test_the_page_fits_its_column_in_headless_chromium(workdir, tmp_path):
    """A screenshot of the page at 1400 px: nothing is drawn outside the page's column (a
    too-wide table or figure would be), and the figures are there."""
    from PIL import Image

    health_two_days(workdir)
    cvr_runs(workdir)
    (workdir.root / "demo").mkdir()
    (workdir.root / "demo" / "lift.md").write_text(LIFT)
    report_page(workdir)
    shot = tmp_path / "page.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    args += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,4000"]
    args += [f"--screenshot={shot}", (workdir.root / "report" / "index.html").as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]

    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape == (4000, 1400, 3)
    # body: max-width 1200 px plus 1.5em padding, centred: content in x = 100..1300
    margins = np.concatenate([rgb[:, :70], rgb[:, 1330:]], axis=1)
    assert (margins == 255).all(), "something is drawn outside the page column"
    colour = rgb.max(axis=2).astype(int) - rgb.min(axis=2)  # text and tables are grey
    assert (colour > 60).sum() > 2000  # the embedded figures were decoded and drawn
