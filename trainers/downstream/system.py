"""The thin LightningModule of the downstream models: losses, optimiser, validation.

Loss: the mean over tasks of each task's binary cross-entropy on the rows whose label is
known (`label_mask`), plus `embedding_l2` times the squared norm of the hashed id/categorical
tables (`embedding_penalty`), `dense_l2` times that of every other weight matrix
(`dense_penalty`: crossing, gates, towers, heads, encoders) and `wide_l2` times that of the
Wide & Deep linear term (`models.WideLinear`), when it has one. Validation (a time split of
the training days, `data.time_split`): ROC-AUC, PR-AUC and log loss of the primary task over
the whole split, logged as `val_logloss` etc.; early stopping watches `val_logloss` and
`BestWeights` restores the epoch that had the lowest. The eval days are scored afterwards
(`predict`), never seen here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from trainers.downstream.models import WideLinear
from trainers.modules.encoders import HashedEmbedding


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean over tasks of the BCE over each task's labelled rows; [B, T] inputs -> scalar."""
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    mask = mask.to(logits.dtype)
    per_task = (losses * mask).sum(0) / mask.sum(0).clamp(min=1.0)
    return per_task[mask.sum(0) > 0].mean() if mask.any() else logits.sum() * 0.0


def embedding_penalty(model: nn.Module) -> Tensor:
    """Sum of squares of every hashed embedding table of `model` (0 when it has none).

    The L2 term a logistic regression on one-hot ids has: a row is pulled to zero unless
    its rows of data pay for it, so rare and unseen ids (and the buckets they share) stay
    near zero instead of keeping their random start or memorising a few clicks. Early
    stopping alone stopped the CTR model after its first epoch, before the well-supported
    rows had converged (BENCHMARKS.md, issue 11).
    """
    tables = [m.table.weight for m in model.modules() if isinstance(m, HashedEmbedding)]
    if not tables:
        return torch.zeros(())
    return sum(t.pow(2).sum() for t in tables)


def _tables(model: nn.Module) -> set[int]:
    """ids of the parameters with penalties of their own (hashed tables, wide weights)."""
    return {
        id(p)
        for m in model.modules()
        if isinstance(m, (HashedEmbedding, WideLinear))
        for p in m.parameters()
    }


def dense_penalty(model: nn.Module) -> Tensor:
    """Sum of squares of every weight matrix (ndim >= 2) of `model` other than the hashed
    tables and the wide weights: the crossing layers, gates, towers, heads and encoders.
    Biases and norms are left free, as a logistic regression's intercept is."""
    own = _tables(model)
    weights = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in own]
    return sum(w.pow(2).sum() for w in weights) if weights else torch.zeros(())


def wide_penalty(model: nn.Module) -> Tensor:
    """Sum of squares of the Wide & Deep linear weights of `model` (0 when it has none)."""
    tables = [m.weight.weight for m in model.modules() if isinstance(m, WideLinear)]
    return sum(t.pow(2).sum() for t in tables) if tables else torch.zeros(())


class DownstreamSystem(L.LightningModule):
    """Trains a downstream network (CTRModel or CVRModel) on its tasks.

    Args:
        model (nn.Module): maps a batch dict to [B, T] logits.
        tasks (Sequence[str]): the label of each logit column.
        primary (str): the task the eval metrics are computed on.
        lr (float), weight_decay (float): AdamW.
        embedding_l2 (float): weight of `embedding_penalty` in the training loss (0: none).
        dense_l2 (float), wide_l2 (float): weights of `dense_penalty` and `wide_penalty`.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        primary: str,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        embedding_l2: float = 0.0,
        dense_l2: float = 0.0,
        wide_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)
        self.primary_index = self.tasks.index(primary)
        self.lr, self.weight_decay = lr, weight_decay
        self.embedding_l2 = embedding_l2
        self.dense_l2, self.wide_l2 = dense_l2, wide_l2
        self.roc_auc = BinaryAUROC()
        self.pr_auc = BinaryAveragePrecision()
        self._logloss_sum = 0.0
        self._logloss_rows = 0
        self.eval_metrics: dict[str, float] = {}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = masked_bce(self.model(batch), batch["labels"], batch["label_mask"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        if self.embedding_l2:
            loss = loss + self.embedding_l2 * embedding_penalty(self.model)
        if self.dense_l2:
            loss = loss + self.dense_l2 * dense_penalty(self.model)
        if self.wide_l2:
            loss = loss + self.wide_l2 * wide_penalty(self.model)
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
        self.log_dict({f"val_{k}": v for k, v in metrics.items()}, prog_bar=True)

    @torch.no_grad()
    def predict(self, loader) -> tuple[Tensor, Tensor]:
        """(labels, probabilities) of the primary task on the labelled rows of `loader`."""
        self.model.eval()
        i = self.primary_index
        labels, probs = [], []
        for batch in loader:
            mask = batch["label_mask"][:, i]
            labels.append(batch["labels"][:, i][mask])
            probs.append(torch.sigmoid(self.model(batch)[:, i][mask]))
        return torch.cat(labels), torch.cat(probs)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class BestWeights(L.Callback):
    """Keeps, in memory, the weights of the epoch with the lowest `monitor` and loads them
    when fitting ends (early stopping's patience epochs are thereby undone).

    Attributes after fit: best (float), best_epoch (int, 0-based), best_step (optimiser
    steps taken at the best check), epochs_run (int).
    """

    def __init__(self, monitor: str = "val_logloss") -> None:
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = -1
        self.best_step = -1
        self.epochs_run = 0
        self._state: dict | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        self.epochs_run = trainer.current_epoch + 1
        if value is not None and float(value) < self.best:
            self.best, self.best_epoch = float(value), trainer.current_epoch
            self.best_step = trainer.global_step
            self._state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state is not None:
            pl_module.load_state_dict(self._state)
