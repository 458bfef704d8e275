"""Downstream models: module shapes, the CTR and CVR networks, and `derm downstream` end to end."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.core.logs import CATEGORICAL, DENSE, PRETRAINED, SEQUENCE, FeatureSpec, LogSchema
from trainers.downstream.data import TASKS
from trainers.downstream.models import CTRModel, CVRModel, DermInputs, NetworkConfig
from trainers.modules.crossnet import LowRankCrossNet
from trainers.modules.moe import MultiGateMixtureOfExperts
from trainers.upstream.model import tower_layout

SCHEMA = LogSchema(
    id_type="int64",
    has_surface=True,
    features=(
        FeatureSpec("user_country", "user", CATEGORICAL),
        FeatureSpec("user_clicks_30d", "user", DENSE),
        FeatureSpec("user_recent_pins", "user", SEQUENCE),
        FeatureSpec("pin_category", "pin", CATEGORICAL),
        FeatureSpec("pin_content_embedding", "pin", PRETRAINED, dim=8),
        FeatureSpec("ctx_hour", "ctx", CATEGORICAL),
    ),
)


def fake_batch(b: int, derm_dims: list[int], cfg: NetworkConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {}
    for tower, layout in tower_layout(SCHEMA, cfg.feature_config(("click",))).items():
        batch[f"{tower}_cat"] = torch.randint(0, 1000, (b, layout.n_cat), generator=g)
        batch[f"{tower}_dense"] = torch.rand(b, layout.n_dense, generator=g)
        seq = torch.randint(0, 1000, (b, layout.n_seq, cfg.seq_len), generator=g)
        seq[:, :, 5:] = 0  # padding
        batch[f"{tower}_seq"] = seq
        batch[f"{tower}_pre"] = torch.randn(b, sum(layout.pre_dims), generator=g)
    batch["derm"] = torch.randn(b, sum(derm_dims), generator=g)
    batch["derm_present"] = torch.ones(b, len(derm_dims))
    return batch


def test_low_rank_crossnet_shape_and_identity_at_zero_weights():
    cross = LowRankCrossNet(in_features=12, num_layers=3, low_rank=4)
    x = torch.randn(5, 12)
    assert cross(x).shape == (5, 12)
    for w in cross.W:
        torch.nn.init.zeros_(w.weight)
    # x_{l+1} = x0 * (0 + b) + x_l with b = 0: every layer passes its input through
    torch.testing.assert_close(cross(x), x)
    with pytest.raises(ValueError, match="low_rank >= 1"):
        LowRankCrossNet(4, 1, 0)


def test_mixture_of_experts_gates_per_task():
    experts = [torch.nn.Linear(6, 3) for _ in range(4)]
    moe = MultiGateMixtureOfExperts(experts, in_features=6, num_tasks=2)
    x = torch.randn(7, 6)
    y = moe(x)
    assert y.shape == (7, 2, 3)
    # with the gates zeroed every task averages the experts equally
    torch.nn.init.zeros_(moe.gates.weight)
    torch.nn.init.zeros_(moe.gates.bias)
    mean = torch.stack([e(x) for e in experts], 1).mean(1)
    torch.testing.assert_close(moe(x)[:, 0], mean)
    torch.testing.assert_close(moe(x)[:, 1], mean)


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_derm_inputs_width(projection_dim):
    block = DermInputs([16, 16, 4], projection_dim)
    out = block(torch.randn(3, 36), torch.ones(3, 3))
    assert out.shape == (3, block.out_features)
    assert block.out_features == (projection_dim or 36) + 3


@pytest.mark.parametrize("task", ["ctr", "cvr"])
@pytest.mark.parametrize("derm_dims", [[], [16, 16], [16, 16, 16, 16]])
def test_downstream_models_map_a_batch_to_one_logit_per_task(task, derm_dims):
    cfg = NetworkConfig(token_dim=8, num_buckets=1024, seq_len=10, cross_rank=4, mlp_hidden=16)
    spec = TASKS[task]
    layouts = tower_layout(SCHEMA, cfg.feature_config(spec.tasks))
    model = {"ctr": CTRModel, "cvr": CVRModel}[task](layouts, derm_dims, spec.tasks, cfg)
    batch = fake_batch(6, derm_dims, cfg)
    logits = model(batch)
    assert logits.shape == (6, len(spec.tasks))
    assert torch.isfinite(logits).all()
    if derm_dims:  # the DERM embeddings reach the output
        other = dict(batch, derm=batch["derm"] + 1.0)
        assert not torch.allclose(model(other), logits)


def test_projection_layer_narrows_the_ctr_crossing():
    cfg = NetworkConfig(token_dim=8, num_buckets=1024, seq_len=10, cross_rank=4)
    layouts = tower_layout(SCHEMA, cfg.feature_config(("click", "conversion")))
    wide = CTRModel(layouts, [64] * 4, ("click", "conversion"), cfg)
    projected = NetworkConfig(**{**cfg.__dict__, "projection_dim": 16})
    narrow = CTRModel(layouts, [64] * 4, ("click", "conversion"), projected)
    assert narrow.input_norm.normalized_shape[0] == wide.input_norm.normalized_shape[0] - 256 + 16
    assert narrow(fake_batch(4, [64] * 4, cfg)).shape == (4, 2)


@pytest.mark.slow
def test_derm_downstream_prints_the_metrics_json_line_last(applied_workdir, tmp_path):
    from test_training_set import write_offline

    from derm_features.synthetic import GenerateConfig, generate_logs

    out = tmp_path / "gen"
    start = dt.date(2026, 1, 1)
    generate_logs(
        GenerateConfig(out=out, users=300, pins=80, days=4, start=start,
                       impressions_per_day=1500, progress=False)
    )  # fmt: skip
    rng = np.random.default_rng(0)
    users = [1_000_000_000 + i for i in range(300)]
    rows = [
        (u, start + dt.timedelta(days=d), list(rng.normal(size=4))) for u in users for d in range(3)
    ]
    write_offline(applied_workdir, "ctr", "user", rows)
    args = [
        "downstream", "--task", "ctr", "--logs", str(out / "logs"),
        "--workdir", str(applied_workdir.root),
        "--train-start", "2026-01-01", "--train-end", "2026-01-03",
        "--eval-start", "2026-01-04", "--eval-end", "2026-01-04",
        "--embeddings", "ctr_user", "--epochs", "1", "--seed", "3",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # stdout's last line (warnings and progress bars go to stderr)
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) >= {"roc_auc", "pr_auc", "logloss"}
    assert 0.0 <= last["roc_auc"] <= 1.0 and last["logloss"] > 0
    assert last["embeddings"] == "ctr_user" and last["eval_rows"] == 1500
    # early stopping on the last training day; the baselines and both models on the same rows
    assert last["best_epoch"] == 1 and last["val_rows"] == 1500
    models = last["comparison"]
    assert set(models) == {
        "prior", "pin rate", "logistic regression", "logistic regression + DERM",
        "derm model", "derm model + DERM",
    }  # fmt: skip
    assert models["prior"]["roc_auc"] == 0.5
    assert models["derm model + DERM"]["roc_auc"] == last["roc_auc"]
    lo, hi = models["derm model + DERM"]["roc_auc_lift_ci"]
    assert lo <= models["derm model + DERM"]["roc_auc_lift_pct"] <= hi
    assert "| pin rate |" in result.stdout
    written = applied_workdir.metrics / "downstream" / "ctr_ctr_user_s3.md"
    assert "| derm model + DERM |" in written.read_text()
    # the same seed gives the same metrics
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["roc_auc"] == last["roc_auc"] and again["logloss"] == last["logloss"]


def test_derm_downstream_rejects_eval_days_inside_training(tmp_path):
    args = [
        "downstream", "--task", "ctr", "--logs", str(tmp_path),
        "--train-start", "2026-01-01", "--train-end", "2026-01-03",
        "--eval-start", "2026-01-03", "--eval-end", "2026-01-04",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--eval-start 2026-01-03 must come after --train-end" in result.output


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--embeddings", "ctr_item", "--embeddings: unknown embedding(s) ['ctr_item']"),
        ("--set-format", "csv", "--set-format must be one of parquet, arrow, got 'csv'"),
    ],
)
def test_derm_downstream_rejects_a_bad_flag_by_name(tmp_path, flag, value, message):
    args = [
        "downstream", "--task", "cvr", "--logs", str(tmp_path),
        "--train-start", "2026-01-01", "--train-end", "2026-01-03",
        "--eval-start", "2026-01-04", "--eval-end", "2026-01-04", flag, value,
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_experiment_runner_end_to_end_on_a_tiny_log(applied_workdir):
    """generate -> upstream train/infer -> materialize -> Feast -> downstream, two seeds."""
    from derm_features.jobs.experiments import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(
        table="table2", workdir=applied_workdir.root, seeds=2, users=300, pins=80, days=5,
        impressions_per_day=1500, window_days=2, eval_days=1, downstream_epochs=1,
        progress=False,
    )  # fmt: skip
    result = run_experiment(cfg)
    assert [r["config"] for r in result.rows] == [
        "ctr_user", "cvr_user", "ctr_user+ctr_pin", "ctr_user+cvr_user", "cvr_user+cvr_pin",
        "all four",
    ]  # fmt: skip
    for row in result.rows:
        assert row["seeds"] == 2 and np.isfinite(row["roc_auc_lift_mean"])
        assert row["roc_auc_lift_std"] >= 0.0
        lo, hi = row["roc_auc_lift_ci"]  # paired bootstrap of the seed-mean lift
        assert np.isfinite(lo) and lo < hi
    assert result.markdown_path.read_text().startswith("### table2")
    assert "| all four |" in result.markdown
    assert "simple baselines on the same eval rows" in result.markdown
    assert "| pin rate |" in result.markdown and "| logistic regression |" in result.markdown
    assert result.chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the DERM runs really read embeddings: the eval training set has present values
    evals = sorted((applied_workdir.root / "training_sets").glob("2026-01-05_*"))
    from trainers.downstream.training_set import open_training_set

    present = open_training_set(evals[0]).read(["has_ctr_user_embedding"]).column(0)
    assert 0 < sum(present.to_pylist()) <= present.length()


def test_select_embeddings_narrows_and_scores_user_pin_pairs():
    from trainers.downstream.data import select_embeddings

    dims = {"ctr_user": 3, "ctr_pin": 3, "cvr_user": 2}
    derm = torch.arange(8 * 2, dtype=torch.float32).view(2, 8)
    tensors = {"derm": derm, "derm_present": torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])}
    both = select_embeddings(tensors, dims, ("ctr_user", "ctr_pin"))
    torch.testing.assert_close(both["derm"], derm[:, :6])
    expected = (derm[:, :3] * derm[:, 3:6]).sum(1, keepdim=True)  # u_ctr . p_ctr
    torch.testing.assert_close(both["derm_score"], expected)
    one = select_embeddings(tensors, dims, ("cvr_user",))
    torch.testing.assert_close(one["derm"], derm[:, 6:])
    torch.testing.assert_close(one["derm_present"], tensors["derm_present"][:, [2]])
    assert one["derm_score"].shape == (2, 0)  # no Pin embedding of cvr: no score
    none = select_embeddings(tensors, dims, ())
    assert none["derm"].shape == (2, 0) and none["derm_present"].shape == (2, 0)


def test_experiment_cache_key_changes_with_every_training_setting(tmp_path, monkeypatch):
    import dataclasses

    from derm_features.jobs.experiments import run_key
    from trainers.downstream.job import DownstreamConfig

    day = dt.date(2026, 1, 1)
    cfg = DownstreamConfig(
        task="ctr", logs=tmp_path, workdir=tmp_path, train_start=day, train_end=day,
        eval_start=day + dt.timedelta(days=1), eval_end=day + dt.timedelta(days=1),
    )  # fmt: skip
    key = run_key(cfg, ("ctr_user",))
    assert key.startswith("ctr_ctr_user_s0_") and key == run_key(cfg, ("ctr_user",))
    network = dataclasses.replace(cfg.network, dropout=0.3)
    for changed in (dataclasses.replace(cfg, lr=1e-3), dataclasses.replace(cfg, network=network)):
        assert run_key(changed, ("ctr_user",)) != key
    assert run_key(dataclasses.replace(cfg, threads=2), ("ctr_user",)) == key
    # a None setting means the task's default: changing that default changes the key too
    from trainers.downstream import job

    for table in (job.EMBEDDING_L2, job.DENSE_L2, job.WIDE_L2):
        monkeypatch.setitem(table, "ctr", table["ctr"] + 1.0)
        assert run_key(cfg, ("ctr_user",)) != key
        monkeypatch.undo()
    assert run_key(cfg, ("ctr_user",)) == key
    # and so does the downstream code: a changed model is a changed run
    from derm_features.jobs import experiments

    digest = experiments.downstream_code_digest()
    assert len(digest) == 16 and digest == experiments.downstream_code_digest()
    monkeypatch.setattr(experiments, "downstream_code_digest", lambda: "another model")
    assert run_key(cfg, ("ctr_user",)) != key


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@torch.no_grad()
def test_embedding_l2_adds_the_tables_squared_norm_to_the_training_loss(tmp_path):
    from trainers.downstream.job import EMBEDDING_L2, DownstreamConfig
    from trainers.downstream.system import DownstreamSystem, embedding_penalty, masked_bce

    cfg = NetworkConfig(token_dim=4, num_buckets=64, seq_len=8, num_experts=1, cross_rank=2)
    model = CTRModel(tower_layout(SCHEMA, cfg.feature_config(("click",))), [], ("click",), cfg)
    batch = fake_batch(16, [], cfg)
    batch["labels"] = (torch.arange(16) % 4 == 0).float()[:, None]
    batch["label_mask"] = torch.ones(16, 1, dtype=torch.bool)
    table = model.features.embedding.table.weight
    assert float(embedding_penalty(model)) == pytest.approx(float(table.pow(2).sum()))
    bce = float(masked_bce(model.eval()(batch), batch["labels"], batch["label_mask"]))
    plain = DownstreamSystem(model, ("click",), "click").eval()
    regularised = DownstreamSystem(model, ("click",), "click", embedding_l2=0.5).eval()
    assert float(plain.training_step(batch, 0)) == pytest.approx(bce)
    assert float(regularised.training_step(batch, 0)) == pytest.approx(
        bce + 0.5 * float(table.pow(2).sum()), rel=1e-5
    )
    day, after = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    run = {"logs": tmp_path, "workdir": tmp_path, "train_start": day, "train_end": day,
           "eval_start": after, "eval_end": after}  # fmt: skip
    assert DownstreamConfig(task="ctr", **run).table_l2 == EMBEDDING_L2["ctr"] > 0
    assert DownstreamConfig(task="cvr", **run).table_l2 == EMBEDDING_L2["cvr"] > 0
    assert DownstreamConfig(task="ctr", embedding_l2=0.0, **run).table_l2 == 0.0
    with pytest.raises(Exception, match="embedding_l2"):
        DownstreamConfig(task="ctr", embedding_l2=-1.0, **run)


@torch.no_grad()
def test_wide_part_reads_exactly_the_logistic_regressions_sparse_inputs():
    from trainers.downstream.baselines import design_matrix
    from trainers.downstream.models import WideLinear

    cfg = NetworkConfig(token_dim=4, num_buckets=1024, seq_len=10)
    batch = fake_batch(6, [], cfg)
    n = 6
    batch.update(labels=torch.zeros(n, 1), counts=torch.zeros(n, 0), derm_score=torch.zeros(n, 0))
    wide = WideLinear(cfg.num_buckets, 1)
    assert torch.equal(wide(batch), torch.zeros(n, 1))  # starts as a fresh regression
    w = torch.randn(cfg.num_buckets, generator=torch.Generator().manual_seed(1))
    wide.weight.weight.copy_(w[:, None])
    x, _ = design_matrix(batch, cfg.num_buckets)
    sparse = x[:, : cfg.num_buckets].toarray()  # the one-hot and sequence-bag columns
    np.testing.assert_allclose(wide(batch)[:, 0].numpy(), sparse @ w.numpy(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@torch.no_grad()
def test_dense_and_wide_l2_add_their_own_squared_norms(tmp_path):
    import dataclasses

    from trainers.downstream.job import DENSE_L2, WIDE_L2, DownstreamConfig
    from trainers.downstream.system import (
        DownstreamSystem,
        dense_penalty,
        embedding_penalty,
        masked_bce,
        wide_penalty,
    )

    cfg = NetworkConfig(token_dim=4, num_buckets=64, seq_len=8, num_experts=1, cross_rank=2,
                        wide=True)  # fmt: skip
    model = CTRModel(tower_layout(SCHEMA, cfg.feature_config(("click",))), [], ("click",), cfg)
    model.wide.weight.weight.fill_(0.5)
    batch = fake_batch(16, [], cfg)
    batch["labels"] = (torch.arange(16) % 4 == 0).float()[:, None]
    batch["label_mask"] = torch.ones(16, 1, dtype=torch.bool)
    matrices = [p for n, p in model.named_parameters()
                if p.ndim >= 2 and not n.startswith(("features.embedding.", "wide."))]  # fmt: skip
    dense = sum(float(p.pow(2).sum()) for p in matrices)
    assert float(dense_penalty(model)) == pytest.approx(dense, rel=1e-5)
    assert float(wide_penalty(model)) == pytest.approx(64 * 0.25)
    # each penalty sees only its own weights
    table = float(model.features.embedding.table.weight.pow(2).sum())
    assert float(embedding_penalty(model)) == pytest.approx(table, rel=1e-5)
    bce = float(masked_bce(model.eval()(batch), batch["labels"], batch["label_mask"]))
    system = DownstreamSystem(model, ("click",), "click", dense_l2=0.1, wide_l2=0.01).eval()
    assert float(system.training_step(batch, 0)) == pytest.approx(
        bce + 0.1 * dense + 0.01 * 16.0, rel=1e-5
    )
    day, after = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    run = {"logs": tmp_path, "workdir": tmp_path, "train_start": day, "train_end": day,
           "eval_start": after, "eval_end": after}  # fmt: skip
    ctr, cvr = (DownstreamConfig(task=t, **run) for t in ("ctr", "cvr"))
    assert (ctr.matrix_l2, ctr.wide_part) == (DENSE_L2["ctr"], (True, WIDE_L2["ctr"]))
    assert (cvr.matrix_l2, cvr.wide_part) == (DENSE_L2["cvr"], (False, 0.0))
    off = dataclasses.replace(ctr, dense_l2=0.0, network=NetworkConfig(wide=False))
    assert (off.matrix_l2, off.wide_part[0]) == (0.0, False)
    for bad in ({"dense_l2": -1.0}, {"wide_l2": -1.0}, {"sample_fraction": 0.0},
                {"sample_fraction": 1.5}):  # fmt: skip
        with pytest.raises(Exception, match=next(iter(bad)).replace("_", ".")):
            DownstreamConfig(task="ctr", **run, **bad)


def test_sample_fraction_draws_train_and_validation_rows_per_seed(tmp_path):
    from trainers.downstream.job import DownstreamConfig, Encoded, sample

    def rows(n: int) -> dict[str, torch.Tensor]:
        return {"labels": torch.arange(n).float()[:, None], "ts": torch.arange(n)}

    enc = Encoded(rows(10_000), rows(2_000), rows(500), {}, SCHEMA, None)
    day, after = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    run = {"task": "ctr", "logs": tmp_path, "workdir": tmp_path, "train_start": day,
           "train_end": day, "eval_start": after, "eval_end": after}  # fmt: skip
    assert sample(enc, DownstreamConfig(**run)) is enc
    part = sample(enc, DownstreamConfig(**run, sample_fraction=0.3, seed=1))
    assert 2_700 < len(part.train["labels"]) < 3_300 and 500 < len(part.val["labels"]) < 700
    assert part.eval is enc.eval  # eval rows never sampled
    # rows stay aligned across tensors; the same seed draws the same rows, another seed others
    assert torch.equal(part.train["labels"][:, 0].long(), part.train["ts"])
    again = sample(enc, DownstreamConfig(**run, sample_fraction=0.3, seed=1))
    other = sample(enc, DownstreamConfig(**run, sample_fraction=0.3, seed=2))
    assert torch.equal(again.train["ts"], part.train["ts"])
    assert not torch.equal(other.train["ts"][:100], part.train["ts"][:100])
