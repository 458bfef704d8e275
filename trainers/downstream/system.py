"""The thin LightningModule of the downstream models: losses, optimiser, eval metrics.

Loss: the mean over tasks of each task's binary cross-entropy on the rows whose label is
known (`label_mask`). Eval: ROC-AUC, PR-AUC (average precision) and log loss of the
primary task's predictions over the whole eval set (exact, not per-batch averages).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean over tasks of the BCE over each task's labelled rows; [B, T] inputs -> scalar."""
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    mask = mask.to(logits.dtype)
    per_task = (losses * mask).sum(0) / mask.sum(0).clamp(min=1.0)
    return per_task[mask.sum(0) > 0].mean() if mask.any() else logits.sum() * 0.0


class DownstreamSystem(L.LightningModule):
    """Trains a downstream network (CTRModel or CVRModel) on its tasks.

    Args:
        model (nn.Module): maps a batch dict to [B, T] logits.
        tasks (Sequence[str]): the label of each logit column.
        primary (str): the task the eval metrics are computed on.
        lr (float), weight_decay (float): AdamW.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        primary: str,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)
        self.primary_index = self.tasks.index(primary)
        self.lr, self.weight_decay = lr, weight_decay
        self.roc_auc = BinaryAUROC()
        self.pr_auc = BinaryAveragePrecision()
        self._logloss_sum = 0.0
        self._logloss_rows = 0
        self.eval_metrics: dict[str, float] = {}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = masked_bce(self.model(batch), batch["labels"], batch["label_mask"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._logloss_sum, self._logloss_rows = 0.0, 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        i = self.primary_index
        mask = batch["label_mask"][:, i]
        logits = self.model(batch)[:, i][mask]
        labels = batch["labels"][:, i][mask]
        if not len(labels):
            return
        self.roc_auc.update(torch.sigmoid(logits), labels.long())
        self.pr_auc.update(torch.sigmoid(logits), labels.long())
        self._logloss_sum += float(
            F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        )
        self._logloss_rows += len(labels)

    def on_validation_epoch_end(self) -> None:
        metrics = {
            "roc_auc": float(self.roc_auc.compute()),
            "pr_auc": float(self.pr_auc.compute()),
            "logloss": self._logloss_sum / max(self._logloss_rows, 1),
        }
        self.roc_auc.reset()
        self.pr_auc.reset()
        self.eval_metrics = metrics
        self.log_dict(metrics, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
