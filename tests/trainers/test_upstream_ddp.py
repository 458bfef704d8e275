"""Upstream training on two CPU processes (Lightning DDP, gloo), as users outgrow one:
`derm train --accelerator cpu --devices 2 --strategy ddp` learns as well as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow
DERM = str(Path(sys.executable).with_name("derm"))
SMALL_MODEL = {
    "token_dim": 16, "mlp_hidden": 32, "head_hidden": [16], "num_buckets": 32768,
    "freq_buckets": 4096, "dhen_layers": [["mlp", "transformer"]],
    "interaction_layers": [["mlp", "masknet"]], "dropout": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    from derm_features.synthetic import GenerateConfig, generate_logs

    out = tmp_path_factory.mktemp("ddp_log")
    generate_logs(
        GenerateConfig(out=out, users=3000, pins=600, days=3, impressions_per_day=20_000,
                       progress=False)
    )  # fmt: skip
    return out / "logs"


def train(log: Path, root: Path, *flags: str) -> dict:
    config = root / "derm.yaml"
    root.mkdir()
    config.write_text(yaml.safe_dump({"spec": {"embedding_dim": 16}, "model": SMALL_MODEL}))
    done = subprocess.run(
        [DERM, "train", "--config", str(config), "--workdir", str(root / "wd"), "--model", "ctr",
         "--logs", str(log), "--start", "2026-01-01", "--end", "2026-01-02", "--epochs", "3",
         "--min-steps", "0", "--batch-size", "512", "--lr", "0.003", "--threads", "1",
         "--accelerator", "cpu", "--no-progress", *flags],
        capture_output=True, text=True, timeout=900, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ddp_on_two_cpu_processes_learns_as_well_as_one(log, tmp_path):
    one = train(log, tmp_path / "one", "--devices", "1")
    two = train(log, tmp_path / "two", "--devices", "2", "--strategy", "ddp")
    assert one["eval_held_out"] and two["eval_held_out"]  # both scored on day 3
    # every rank read its own half: the same rows in all, half the steps each
    assert two["train_rows"] == one["train_rows"]
    assert one["roc_auc"] > 0.6 and two["roc_auc"] > 0.6
    assert abs(one["roc_auc"] - two["roc_auc"]) < 0.03, (one["roc_auc"], two["roc_auc"])
    assert Path(two["checkpoint"]).is_file()  # saved once, by rank 0
    # each rank: half the batches, less an incomplete last round per epoch (3 epochs)
    assert one["steps"] // 2 - 3 <= two["steps"] <= one["steps"] // 2


def test_an_unknown_strategy_is_refused_before_any_work(tmp_path):
    done = subprocess.run(
        [DERM, "train", "--model", "ctr", "--logs", str(tmp_path), "--date", "2026-01-01",
         "--strategy", "horovod", "--workdir", str(tmp_path / "wd")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--strategy must be one of auto" in done.stderr
    assert not (tmp_path / "wd").exists()


def _centre_rank(rank: int, world: int, store_path: str, z, queue) -> None:
    import torch.distributed as dist

    from trainers.upstream.model import BatchCentre

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        centre = BatchCentre(z.shape[1]).train()
        half = z[rank::world].clone().requires_grad_(True)
        out = centre(half)
        (out * torch.arange(out.shape[1], dtype=out.dtype)).sum().backward()
        tensors = (out.detach(), half.grad, centre.running_mean, centre.running_var)
        queue.put((rank, *(t.numpy().copy() for t in tensors)))  # plain arrays outlive us
    finally:
        dist.destroy_process_group()


def test_tower_batch_norm_under_ddp_normalises_by_the_global_batch(tmp_path):
    """Two gloo ranks, each with half of a batch, give the rows, gradients and running
    statistics that one process gives on the whole batch (torch's SyncBatchNorm is GPU-only)."""
    import torch.multiprocessing as mp

    from trainers.upstream.model import BatchCentre

    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    whole = z.clone().requires_grad_(True)
    centre = BatchCentre(8).train()
    expected = centre(whole)
    (expected * torch.arange(8, dtype=z.dtype)).sum().backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_centre_rank, args=(r, 2, str(tmp_path / "store"), z, queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = dict((r, rest) for r, *rest in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, arrays in results.items():
        out, grad, mean, var = (torch.from_numpy(a) for a in arrays)
        torch.testing.assert_close(out, expected.detach()[rank::2])
        torch.testing.assert_close(grad, whole.grad[rank::2])
        torch.testing.assert_close(mean, centre.running_mean)
        torch.testing.assert_close(var, centre.running_var)
