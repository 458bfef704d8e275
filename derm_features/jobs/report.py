"""`derm report`: one static HTML page (no server) about a work directory.

Sections: upstream training curves (Lightning's CSV logs), embedding health over days
(coverage, day-to-day cosine, merged norm, live/expired counts, cancelled merges) and the
downstream lift tables that `derm demo` and `derm experiment` left behind. Figures are PNGs
embedded in the page, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from derm_features.core.atomic import write_text_atomic
from derm_features.core.workdir import Workdir


def _figure_html(fig) -> str:
    """The figure as an embedded PNG, its panel titles as the alt text (read by screen
    readers, and searchable in the page)."""
    import matplotlib.pyplot as plt

    titles = "; ".join(t for ax in fig.axes if (t := ax.get_title()))

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(titles or "figure")}" src="data:image/png;base64,{encoded}"/>'


def training_curves(workdir: Workdir) -> list[str]:
    """One figure per upstream model: training loss and validation AUC per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    parts = []
    root = workdir.metrics / "upstream"
    for model_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        runs = sorted(model_dir.glob("*/metrics.csv"))
        if not runs:
            continue
        fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 3.5))
        val_points = []
        offset = 0
        for run in runs:
            frame = pd.read_csv(run)
            loss_col = next(
                (c for c in frame.columns if c.startswith("train") and "loss" in c), None
            )
            if loss_col is not None:
                loss = frame.dropna(subset=[loss_col])
                ax_loss.plot(loss["step"] + offset, loss[loss_col], lw=1)
                offset += int(loss["step"].max()) + 1 if len(loss) else 0
            auc_col = next((c for c in frame.columns if c.endswith("roc_auc") and "val" in c), None)
            if auc_col is not None and frame[auc_col].notna().any():
                val_points.append((run.parent.name, float(frame[auc_col].dropna().iloc[-1])))
        ax_loss.set_title(f"{model_dir.name}: training loss (runs in order)")
        ax_loss.set_xlabel("step")
        if val_points:
            ax_auc.plot([r for r, _ in val_points], [a for _, a in val_points], marker="o")
            ax_auc.tick_params(axis="x", rotation=45)
        ax_auc.set_title(f"{model_dir.name}: validation ROC-AUC per run")
        parts.append(_figure_html(fig))
    return parts


def health_over_days(workdir: Workdir) -> list[str]:
    """Coverage, day-to-day cosine, merged norm, live/expired counts and cancelled merges
    (`degenerate`) per model and entity: one chart per measure, then the newest rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from materialize.health import read_health

    table = read_health(workdir.metrics)
    if table is None or table.num_rows == 0:
        return []
    frame = table.to_pandas().sort_values("day")
    panels = [
        ("coverage", "coverage of the day's active entities"),
        ("cosine_mean", "day-to-day cosine (mean)"),
        ("cosine_p5", "day-to-day cosine (5th percentile)"),
        ("norm_min", "merged norm before re-normalising (min)"),
        ("live", "live entities"),
        ("expired", "expired entities"),
        ("degenerate", "cancelled merges (previous value kept)"),
    ]
    panels = [(c, t) for c, t in panels if c in frame.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels, strict=True):
        for (model, entity), group in frame.groupby(["model", "entity"]):
            days = group["day"].astype(str).str[:10]
            ax.plot(days, group[column], marker=".", label=f"{model}/{entity}")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    axes[0][0].legend(fontsize=7)
    rows = frame.tail(12).to_html(index=False, float_format=lambda v: f"{v:.4g}")
    return [_figure_html(fig), rows]


def lift_tables(workdir: Workdir) -> list[str]:
    """The Markdown lift tables (and their charts) written by `derm demo` / `derm experiment`."""
    parts = []
    for table in sorted(workdir.root.glob("**/*lift*.md")) + sorted(
        workdir.root.glob("experiments/**/*.md")
    ):
        parts.append(f"<h3>{html.escape(str(table.relative_to(workdir.root)))}</h3>")
        parts.append(f"<pre>{html.escape(table.read_text())}</pre>")
        chart = table.with_suffix(".png")
        if chart.is_file():
            encoded = base64.b64encode(chart.read_bytes()).decode()
            parts.append(f'<img alt="chart" src="data:image/png;base64,{encoded}"/>')
    return parts


def write_report(workdir: Workdir) -> Path:
    """Writes `<workdir>/report/index.html` atomically and returns its path."""
    sections = [
        ("Upstream training", training_curves(workdir)),
        ("Embedding health", health_over_days(workdir)),
        ("Downstream lift", lift_tables(workdir)),
    ]
    body = []
    for title, parts in sections:
        body.append(f"<h2>{title}</h2>")
        body.extend(parts or ["<p><em>nothing yet in this work directory</em></p>"])
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>derm report</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>derm report</h1><p>work directory: {html.escape(str(workdir.root))}</p>"
        + "\n".join(body)
        + "</body></html>"
    )
    path = workdir.root / "report" / "index.html"
    write_text_atomic(page, path)
    return path
