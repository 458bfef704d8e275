"""The upstream training system: a thin LightningModule around DERMModel.

It owns what the network does not: the loss (masked task BCE + ssl_lambda * logQ-corrected
sampled softmax), the trainable temperature, the streaming Pin-frequency estimator (its
buffers are module state, so they save in the snapshot and carry across days), the
optimiser, and the metrics (ROC-AUC and PR-AUC per task, SSL recall@k).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from derm_features.core.logs import LogSchema
from trainers.upstream.config import ModelConfig
from trainers.upstream.frequency import StreamingFrequencyEstimator
from trainers.upstream.losses import recall_at_k, sampled_softmax_loss, temperature
from trainers.upstream.model import DERMModel


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Sum over tasks of each task's mean BCE over its known labels (null labels skipped)."""
    per_entry = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    per_task = (per_entry * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1)
    return per_task.sum()


class UpstreamSystem(L.LightningModule):
    """Trains DERMModel on one log; `model_name` (ctr | cvr) picks the SSL positive label."""

    def __init__(
        self,
        schema: LogSchema,
        model_cfg: ModelConfig,
        model_name: str,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        recall_k: int = 10,
        models: dict[str, str] | None = None,
    ) -> None:
        """`models`: the spec's model -> label map (default ctr -> click, cvr -> conversion);
        `model_name`'s label is the primary task (SSL positives, headline metrics)."""
        super().__init__()
        self.model_cfg = model_cfg
        label_map = {} if models is None else {"models": models}
        self.primary = model_cfg.tasks.index(model_cfg.primary_task(model_name, **label_map))
        self.lr, self.weight_decay, self.recall_k = lr, weight_decay, recall_k
        self.model = DERMModel(schema, model_cfg)
        self.frequency = StreamingFrequencyEstimator(model_cfg.freq_buckets, model_cfg.freq_alpha)
        self.log_tau = nn.Parameter(torch.tensor(math.log(model_cfg.tau_init)))
        tasks = model_cfg.tasks
        # exact (unbinned) curves: fine for a validation day of up to a few million rows
        self.val_auroc = nn.ModuleDict({t: BinaryAUROC() for t in tasks})
        self.val_ap = nn.ModuleDict({t: BinaryAveragePrecision() for t in tasks})
        self.val_positives = nn.ModuleDict({t: SumMetric() for t in tasks})
        self.val_known = nn.ModuleDict({t: SumMetric() for t in tasks})
        self.val_recall = MeanMetric()
        # how well the embeddings alone (u.p) rank the held-out day's primary label: what a
        # downstream model or an ANN index gets from them, apart from the interaction tower
        self.val_tower_auroc = BinaryAUROC()
        self.val_ssl = MeanMetric()
        self.last_val: dict[str, float | None] = {}

    def _ssl(
        self, out: dict[str, Tensor], batch: dict[str, Tensor], correct: bool = True
    ) -> tuple[Tensor, Tensor]:
        """SSL loss and logits; `correct` subtracts log Q (training only: the correction
        undoes in-batch sampling bias, while retrieval ranks by the plain u.p). A user's
        other positive rows in the batch are masked out of their negatives."""
        positive = batch["labels"][:, self.primary].bool() & batch["label_mask"][:, self.primary]
        pin_ids = batch["pin_id"]
        log_q = self.frequency.log_q(pin_ids) if correct else out["pin"].new_zeros(len(pin_ids))
        return sampled_softmax_loss(
            out["user"],
            out["pin"],
            pin_ids,
            positive,
            log_q,
            self.log_tau,
            self.model_cfg.tau_min,
            self.model_cfg.tau_max,
            user_ids=batch["user_id"],  # a user's other positives are not their negatives
        )

    def loss(self, batch: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One training step's loss: bce + ssl_lambda * ssl (paper 3.1).

        Updates the frequency estimator with the batch first (as in Yi et al.'s Algorithm 2,
        the estimator sees a batch before scoring it); `step` is the global step it counts in.
        Returns (loss, bce, ssl, ssl_logits [P, B]).
        """
        self.frequency.update(batch["pin_id"], step)
        out = self.model(batch)
        bce = masked_bce(out["logits"], batch["labels"], batch["label_mask"])
        ssl, ssl_logits = self._ssl(out, batch)
        return bce + self.model_cfg.ssl_lambda * ssl, bce, ssl, ssl_logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, bce, ssl, ssl_logits = self.loss(batch, self.global_step)
        size = batch["labels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/bce", bce, batch_size=size)
        self.log("train/ssl", ssl, batch_size=size)
        tau = temperature(self.log_tau, self.model_cfg.tau_min, self.model_cfg.tau_max)
        self.log("train/tau", tau, batch_size=size)
        if ssl_logits.shape[0]:
            recall = recall_at_k(ssl_logits, self.recall_k)
            self.log(f"train/ssl_recall_at_{self.recall_k}", recall, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.model(batch)
        probs = torch.sigmoid(out["logits"])
        labels, mask = batch["labels"], batch["label_mask"]
        for j, task in enumerate(self.model_cfg.tasks):
            known = mask[:, j]
            target = labels[known, j].long()
            self.val_auroc[task].update(probs[known, j], target)
            self.val_ap[task].update(probs[known, j], target)
            self.val_positives[task].update(target.sum())
            self.val_known[task].update(known.sum())
        primary = mask[:, self.primary]
        tower_score = (out["user"] * out["pin"]).sum(dim=-1)
        self.val_tower_auroc.update(tower_score[primary], labels[primary, self.primary].long())
        # uncorrected scores: Pins first seen on a held-out day would otherwise get the
        # estimator's "rare" boost and crowd the top k
        ssl, ssl_logits = self._ssl(out, batch, correct=False)
        if ssl_logits.shape[0]:
            hits = recall_at_k(ssl_logits, self.recall_k, reduction="none")
            self.val_recall.update(hits)
            self.val_ssl.update(ssl, weight=ssl_logits.shape[0])

    def on_validation_epoch_end(self) -> None:
        """Logs val/<task>/roc_auc etc.; a curve with one class only is reported as None."""
        results: dict[str, float | None] = {}
        for task in self.model_cfg.tasks:
            positives = float(self.val_positives[task].compute())
            known = float(self.val_known[task].compute())
            both = 0 < positives < known
            auroc = float(self.val_auroc[task].compute()) if both else None
            ap = float(self.val_ap[task].compute()) if both else None
            results[f"{task}/roc_auc"], results[f"{task}/pr_auc"] = auroc, ap
            results[f"{task}/positives"] = positives
            results[f"{task}/rows"] = known
            for metric in (
                self.val_auroc[task],
                self.val_ap[task],
                self.val_positives[task],
                self.val_known[task],
            ):
                metric.reset()
        primary = self.model_cfg.tasks[self.primary]
        both = 0 < (results[f"{primary}/positives"] or 0) < (results[f"{primary}/rows"] or 0)
        results["tower_roc_auc"] = float(self.val_tower_auroc.compute()) if both else None
        self.val_tower_auroc.reset()
        has_ssl = self.val_recall.update_count > 0
        results["ssl_recall_at_k"] = float(self.val_recall.compute()) if has_ssl else None
        results["ssl_loss"] = float(self.val_ssl.compute()) if has_ssl else None
        self.val_recall.reset()
        self.val_ssl.reset()
        for key, value in results.items():
            if value is not None:
                self.log(f"val/{key}", value)
        self.last_val = results

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Both tower outputs of every row, with the ids and ts the writer needs."""
        return {
            "user_id": batch["user_id"],
            "pin_id": batch["pin_id"],
            "ts": batch["ts"],
            "user": self.model.user_embedding(batch),
            "pin": self.model.pin_embedding(batch),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
