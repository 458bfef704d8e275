"""Model training: the upstream DERM model (`trainers.upstream`), the downstream CTR/CVR
models (`trainers.downstream`) and reusable modules (`trainers.modules`)."""

import logging
import warnings

# Lightning messages that say nothing actionable about our setup: hardware banners, an
# advert, our IterableDataset's deliberate __len__, predict batches without indices.
_QUIET_WARNINGS = (
    r".*IterableDataset.*has `__len__` defined.*",
    r".*Couldn't infer the batch indices.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def quiet_lightning() -> None:
    """Silences Lightning's banners and known-harmless warnings (errors still show)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def progress_bars(enabled: bool) -> list:
    """Lightning's progress bar, drawn on stderr so that stdout keeps only a command's result
    (its last line is the JSON summary a scheduler parses); [] when disabled."""
    if not enabled:
        return []
    from lightning.pytorch.callbacks import RichProgressBar

    return [RichProgressBar(console_kwargs={"stderr": True})]
