"""`derm report`: one static HTML page (no server) about a work directory.

Sections: upstream training (Lightning's CSV logs: loss, and each model's validation AUC on
its own label), embedding health over days (coverage, counts, merged norm, cancelled
merges), embedding stability (the distribution of the day-to-day cosine per view) and the
downstream lift tables that `derm demo` and `derm experiment` left behind, as HTML tables.
Figures are PNGs embedded in the page, so the file can be mailed or archived on its own.
Values that are undefined (coverage on the first pool day, a cosine on a day that updated
nothing) are left out of the charts and shown as "–" in the tables, never as 0.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from pathlib import Path

from derm_features.core.atomic import write_text_atomic
from derm_features.core.workdir import Workdir

FIG_WIDTH = 11.0  # inches; at FIG_DPI the PNG is wider than the page column, never upscaled
FIG_DPI = 120
# Sizes in points, for a figure shown at about the page's width.
STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
NA = "–"  # how an undefined value reads in a table
HEALTH_PANELS = (
    (
        "coverage",
        "coverage: share of the day's active entities\nthat had an embedding the day before",
    ),
    ("live", "live entities (in the day's pool)"),
    ("new", "new entities (first seen that day)"),
    ("expired", "expired entities (past the TTL)"),
    ("norm_min", "smallest merged norm before re-normalising"),
    ("degenerate", "cancelled merges (previous value kept)"),
)
COUNT_COLUMNS = ("live", "new", "expired", "degenerate")
TABLE_DAYS = 3  # the health table shows the newest days of every view
PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 font-size:16px;line-height:1.45;color:#1a1a1a;max-width:1200px;margin:2em auto;padding:0 1.5em}
h1{margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.5em} p.note{color:#555;margin-top:0}
img{width:100%;height:auto;display:block;margin:.5em 0 1em}
.scroll{max-width:100%;overflow-x:auto;margin:.5em 0 1.5em}
table{border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:3px 7px;white-space:nowrap}
th{background:#f3f3f3;text-align:left} td{text-align:right} td.t{text-align:left}
.md td:first-child{text-align:left}
code{font-size:90%}
"""


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: the report only writes PNGs
    import matplotlib.pyplot as plt

    return plt


def _figure_html(fig) -> str:
    """The figure as an embedded PNG, its panel titles as the alt text (read by screen
    readers, and searchable in the page)."""
    plt = _pyplot()
    titles = "; ".join(t.replace("\n", " ") for ax in fig.axes if (t := ax.get_title()))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIG_DPI, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(titles or "figure")}" src="data:image/png;base64,{encoded}"/>'


def _grid(plt, panels: int, row_height: float):
    """A figure of `panels` axes in two columns at full page width (spare axes removed),
    one day axis for all, labelled under every panel."""
    rows = math.ceil(panels / 2)
    fig, axes = plt.subplots(
        rows, 2, figsize=(FIG_WIDTH, row_height * rows), squeeze=False, sharex=True
    )
    flat = list(axes.flat)
    for spare in flat[panels:]:
        spare.remove()
    for ax in flat[:panels]:
        ax.tick_params(labelbottom=True)
    return fig, flat[:panels]


def _view_style(frame, model: str, entity: str) -> dict:
    """A colour per entity and a line style per model, so views whose values coincide (the
    models share their entities, so their counts do) still show as two lines: the first
    model solid and wide, the others dashed on top of it."""
    models = sorted(frame["model"].unique())
    entities = sorted(frame["entity"].unique())
    first = models.index(model) == 0
    return {
        "color": f"C{entities.index(entity)}",
        "ls": "-" if first else (0, (4, 2 + models.index(model))),
        "lw": 3.0 if first else 1.6,
        "alpha": 0.55 if first else 1.0,
        "marker": "o",
        "ms": 5 if first else 3,
        "zorder": 2 if first else 3,
    }


def _day_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _marker(points: int) -> str | None:
    """Lines of few points get markers: a single point has no line to show it."""
    return "o" if points < 3 else None


# ---------------------------------------------------------------- upstream training


def run_label(run: str) -> str:
    """A run directory's name as a short axis label: ``2026-01-08`` -> ``01-08``, a window
    fit ``2026-01-01_2026-01-07`` -> ``01-01..01-07``."""
    parts = [p[5:] if len(p) == 10 and p[4] == "-" else p for p in run.split("_")]
    return "..".join(parts)


def validation_column(columns, label: str | None, metric: str = "roc_auc") -> str | None:
    """The CSVLogger column of the validation `metric` on `label` (``val/<label>/<metric>``,
    as `trainers.upstream.system` logs it). Without a label (a model outside the spec) only
    an unambiguous one: the column when the run logged that metric for one label alone."""
    if label is not None:
        wanted = f"val/{label}/{metric}"
        return wanted if wanted in columns else None
    found = [c for c in columns if c.startswith("val/") and c.endswith(f"/{metric}")]
    return found[0] if len(found) == 1 else None


def upstream_runs(workdir: Workdir, model: str) -> list[dict]:
    """Every run of `model` in order (the window fit, then one per day): its name, the
    training-loss points (step, loss) and the last validation ROC-AUC / PR-AUC on the
    model's own label (None when the run logged none). Source: the CSVLogger files
    ``<workdir>/metrics/upstream/<model>/<run>/metrics.csv``."""
    import pandas as pd

    label = workdir.spec.models.get(model)
    runs = []
    for path in sorted((workdir.metrics / "upstream" / model).glob("*/metrics.csv")):
        frame = pd.read_csv(path)
        loss_col = "train/loss" if "train/loss" in frame.columns else None
        loss = frame.dropna(subset=[loss_col]) if loss_col else frame.iloc[:0]
        run = {"run": path.parent.name, "label": label, "steps": [], "loss": []}
        if loss_col:
            run["steps"], run["loss"] = loss["step"].tolist(), loss[loss_col].tolist()
        for metric in ("roc_auc", "pr_auc"):
            column = validation_column(frame.columns, label, metric)
            values = frame[column].dropna() if column else []
            run[metric] = float(values.iloc[-1]) if len(values) else None
            if column and run["label"] is None:
                run["label"] = column.split("/")[1]
        runs.append(run)
    return runs


def upstream_figure(model: str, runs: list[dict]):
    """Two panels: training loss over the runs in order, and validation ROC-AUC per run."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(FIG_WIDTH, 4.0))
        offset = 0
        for run in runs:
            if run["steps"]:
                steps = [s + offset for s in run["steps"]]
                ax_loss.plot(steps, run["loss"], lw=1.2, color="C0", marker=_marker(len(steps)))
                ax_loss.axvline(offset, color="#bbb", lw=0.6)
                offset = steps[-1] + 1
        ax_loss.set_title(f"{model}: training loss (runs in order)")
        ax_loss.set_xlabel("step, summed over runs")
        points = [(run_label(r["run"]), r["roc_auc"]) for r in runs if r["roc_auc"] is not None]
        if points:
            ax_auc.plot([p for p, _ in points], [a for _, a in points], marker="o", color="C1")
            ax_auc.tick_params(axis="x", rotation=35)
            for tick in ax_auc.get_xticklabels():
                tick.set_horizontalalignment("right")
        label = next((r["label"] for r in runs if r["label"]), "its label")
        ax_auc.set_title(f"{model}: validation ROC-AUC on {label}")
        ax_auc.set_xlabel("run (window fit, then each day)")
        fig.tight_layout()
    return fig


def _runs_table(runs: list[dict]) -> str:
    rows = [(r["run"], r["label"], r["roc_auc"], r["pr_auc"]) for r in runs]
    return _table(("run", "label", "val ROC-AUC", "val PR-AUC"), rows)


def training_curves(workdir: Workdir) -> list[str]:
    """Per upstream model: its figure and a table of each run's validation AUCs."""
    parts = []
    for model_dir in sorted(p for p in (workdir.metrics / "upstream").glob("*") if p.is_dir()):
        runs = upstream_runs(workdir, model_dir.name)
        if runs:
            parts.append(f"<h3>{html.escape(model_dir.name)}</h3>")
            parts.append(_figure_html(upstream_figure(model_dir.name, runs)))
            parts.append(_runs_table(runs))
    return parts


# ---------------------------------------------------------------- embedding health


def health_frame(workdir: Workdir):
    """The health table (`materialize.health`) as a DataFrame sorted by day, with a
    ``view`` column (model/entity) and ``day`` as datetime; None when it is empty.
    Nulls stay NaN: they are undefined, not zero."""
    import pandas as pd

    from materialize.health import read_health

    table = read_health(workdir.metrics)
    if table.num_rows == 0:
        return None
    frame = table.to_pandas()
    frame["day"] = pd.to_datetime(frame["day"])
    frame["view"] = frame["model"] + "/" + frame["entity"]
    return frame.sort_values(["day", "model", "entity"]).reset_index(drop=True)


def health_figure(frame):
    """One panel per measure of `HEALTH_PANELS`, two columns, a line per view."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plt = _pyplot()
    panels = [(c, t) for c, t in HEALTH_PANELS if c in frame.columns]
    with plt.rc_context(STYLE):
        fig, axes = _grid(plt, len(panels), 3.4)
        for ax, (column, title) in zip(axes, panels, strict=True):
            for (model, entity), group in frame.groupby(["model", "entity"], sort=True):
                ax.plot(group["day"], group[column], label=f"{model}/{entity}",
                        **_view_style(frame, model, entity))  # fmt: skip
            ax.set_title(title)
            _day_axis(ax)
            if column == "coverage":
                ax.set_ylim(-0.02, 1.02)
            elif column in COUNT_COLUMNS:  # counts: from 0, whole numbers, 1,000s separated
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
                ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def stability_figure(frame):
    """Per view, the day-to-day cosine of the embeddings updated that day: 5-95 % and
    25-75 % ranges, median and mean (`materialize.health.COSINE_QUANTILES`). A day with
    no update has no cosine and is left out."""
    plt = _pyplot()
    views = sorted(frame["view"].unique())
    with plt.rc_context(STYLE):
        fig, axes = _grid(plt, len(views), 3.4)
        for ax, view in zip(axes, views, strict=True):
            group = frame[frame["view"] == view]
            day = group["day"]
            ax.vlines(day, group["cosine_p5"], group["cosine_p95"], color="C0", lw=1.5,
                      alpha=0.5, label="5-95 %")  # fmt: skip
            ax.vlines(day, group["cosine_p25"], group["cosine_p75"], color="C0", lw=7,
                      alpha=0.6, label="25-75 %")  # fmt: skip
            ax.plot(day, group["cosine_p50"], "o", color="white", mec="C0", ms=6, label="median")
            ax.plot(day, group["cosine_mean"], "x", color="C3", ms=6, label="mean")
            ax.set_title(f"{view}: day-to-day cosine")
            _day_axis(ax)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _cell(value) -> str:
    """A table cell: whole numbers with thousands separators, others to 4 significant
    digits, an undefined value (None, NaN) as `NA`; text escaped and aligned left."""
    if value is None:
        return f"<td>{NA}</td>"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isnan(value):
            return f"<td>{NA}</td>"
        whole = float(value).is_integer()
        return f"<td>{int(value):,}</td>" if whole else f"<td>{float(value):.4g}</td>"
    return f'<td class="t">{html.escape(str(value))}</td>'


def _table(columns, rows) -> str:
    """An HTML table in a container that scrolls sideways when it is wider than the page."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def health_table(frame) -> str:
    """The newest `TABLE_DAYS` days of every view, in a container that scrolls sideways."""
    newest = sorted(frame["day"].unique())[-TABLE_DAYS:]
    shown = frame[frame["day"].isin(newest)].drop(columns=["view"])
    shown = shown.assign(day=shown["day"].dt.strftime("%Y-%m-%d"))
    first = ["day", "model", "entity"]
    shown = shown[first + [c for c in shown.columns if c not in first]]
    return _table(shown.columns, shown.astype(object).itertuples(index=False))


def health_over_days(workdir: Workdir) -> list[str]:
    """Coverage, counts, merged norm and cancelled merges per view over days, then the
    newest rows of the health table."""
    frame = health_frame(workdir)
    if frame is None:
        return []
    return [_figure_html(health_figure(frame)), health_table(frame)]


def stability(workdir: Workdir) -> list[str]:
    """The distribution of the day-to-day cosine per view."""
    frame = health_frame(workdir)
    if frame is None or frame["cosine_mean"].isna().all():
        return []
    return [_figure_html(stability_figure(frame))]


# ---------------------------------------------------------------- downstream lift


def markdown_html(text: str) -> str:
    """Markdown (headings, paragraphs, GFM tables) as HTML, by markdown-it-py; raw HTML in
    the text is escaped, and every table scrolls sideways in its own container."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    tables = rendered.replace("<table>", '<div class="scroll"><table>')
    return '<div class="md">' + tables.replace("</table>", "</table></div>") + "</div>"


def lift_tables(workdir: Workdir) -> list[str]:
    """The lift tables (and their charts) written by `derm demo` / `derm experiment`."""
    parts = []
    for table in sorted(workdir.root.glob("**/*lift*.md")) + sorted(
        workdir.root.glob("experiments/**/*.md")
    ):
        where = html.escape(str(table.relative_to(workdir.root)))
        parts.append(f"<p class='note'>from <code>{where}</code></p>")
        parts.append(markdown_html(table.read_text()))
        chart = table.with_suffix(".png")
        if chart.is_file():
            encoded = base64.b64encode(chart.read_bytes()).decode()
            parts.append(f'<img alt="chart" src="data:image/png;base64,{encoded}"/>')
    return parts


# ---------------------------------------------------------------- the page

SECTIONS = (
    (
        "Upstream training",
        "Training loss of every run in order (the window fit, then one run a day), and each "
        "model's validation ROC-AUC on its own label.",
        training_curves,
    ),
    (
        "Embedding health",
        "One line per view. Coverage is undefined on a view's first pool day (no pool "
        "before it) and left out.",
        health_over_days,
    ),
    (
        "Embedding stability",
        "Cosine between an entity's published embedding on one day and the day before, over "
        "the entities updated that day: a drop or a widening range means embeddings moved.",
        stability,
    ),
    ("Downstream lift", "", lift_tables),
)


def write_report(workdir: Workdir) -> Path:
    """Writes `<workdir>/report/index.html` atomically and returns its path."""
    body = []
    for title, note, section in SECTIONS:
        parts = section(workdir)
        body.append(f"<h2>{title}</h2>")
        if parts and note:
            body.append(f"<p class='note'>{html.escape(note)}</p>")
        body.extend(parts or ["<p><em>nothing yet in this work directory</em></p>"])
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>derm report</title><style>{PAGE_CSS}</style></head><body>"
        f"<h1>derm report</h1><p class='note'>work directory "
        f"<code>{html.escape(str(workdir.root))}</code></p>\n" + "\n".join(body) + "</body></html>"
    )
    path = workdir.root / "report" / "index.html"
    write_text_atomic(page, path)
    return path
