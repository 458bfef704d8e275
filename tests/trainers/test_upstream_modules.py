"""The upstream model's building blocks: modules, towers, SSL loss, frequency estimator."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from derm_features.core.logs import FeatureSpec, LogSchema
from trainers.modules.dhen import DHEN, DHENLayer
from trainers.modules.encoders import (
    DenseEncoder,
    HashedEmbedding,
    PretrainedEncoder,
    SequenceEncoder,
)
from trainers.modules.masknet import MaskBlock, MaskNet
from trainers.modules.mlp import MLP
from trainers.upstream.config import ModelConfig
from trainers.upstream.frequency import (
    GAMMA,
    StreamingFrequencyEstimator,
    _to_int64,
    splitmix64,
)
from trainers.upstream.losses import recall_at_k, sampled_softmax_loss, temperature
from trainers.upstream.model import DERMModel, tower_layout

KINDS = ("masknet", "transformer", "mlp")


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(token_dim=8, embedding_dim=16, num_buckets=1024, mlp_hidden=16, **kw)


def full_schema(id_type: str = "int64") -> LogSchema:
    """The generator's columns (names are incidental: the model only reads kinds)."""
    f = FeatureSpec
    return LogSchema(
        id_type=id_type,
        has_surface=True,
        features=(
            f("user_country", "user", "categorical"),
            f("user_age_bucket", "user", "categorical"),
            f("user_sessions_7d", "user", "dense"),
            f("user_clicks_30d", "user", "dense"),
            f("user_recent_pins", "user", "sequence"),
            f("pin_category", "pin", "categorical"),
            f("pin_advertiser_id", "pin", "categorical"),
            f("pin_impressions_7d", "pin", "dense"),
            f("pin_content_embedding", "pin", "pretrained", 32),
            f("ctx_surface", "ctx", "categorical"),
            f("ctx_hour", "ctx", "categorical"),
            f("ctx_position", "ctx", "categorical"),
        ),
    )


def no_ctx_schema() -> LogSchema:
    """No ctx features, no surface, string ids and string-typed categoricals only."""
    f = FeatureSpec
    return LogSchema(
        id_type="string",
        features=(f("user_country", "user", "categorical"), f("pin_brand", "pin", "categorical")),
    )


def make_batch(schema: LogSchema, cfg: ModelConfig, n: int, seed: int = 0) -> dict:
    """A batch as the data pipeline builds it, from tower_layout alone."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "user_id": torch.randint(0, 2**40, (n,), generator=g),
        "pin_id": torch.randint(0, 2**40, (n,), generator=g),
        "labels": torch.randint(0, 2, (n, len(cfg.tasks)), generator=g).float(),
        "label_mask": torch.ones(n, len(cfg.tasks), dtype=torch.bool),
    }
    for tower, lay in tower_layout(schema, cfg).items():
        batch[f"{tower}_cat"] = torch.randint(0, cfg.num_buckets, (n, lay.n_cat), generator=g)
        batch[f"{tower}_dense"] = torch.rand(n, lay.n_dense, generator=g) * 1e4
        seq = torch.randint(1, cfg.num_buckets, (n, lay.n_seq, cfg.seq_len), generator=g)
        seq[:, :, cfg.seq_len // 2 :] = 0  # second half padding
        seq[0] = 0  # one user with an empty history
        batch[f"{tower}_seq"] = seq
        batch[f"{tower}_pre"] = torch.randn(n, sum(lay.pre_dims), generator=g)
    return batch


# ---------------------------------------------------------------- generic modules


def test_mlp_shapes_and_linear_last_layer():
    mlp = MLP(12, [8, 3])
    assert mlp(torch.randn(5, 12)).shape == (5, 3)
    assert (mlp(torch.randn(5, 12)) >= 0).all()  # ReLU after the last layer
    head = MLP(12, [8, 1], activate_last=False)
    out = head(-torch.ones(64, 12) * torch.arange(64.0).unsqueeze(1))
    assert out.shape == (64, 1) and isinstance(head.layers[-1], torch.nn.Linear)


@pytest.mark.parametrize("mode,out_dim", [("serial", 10), ("parallel", 30)])
def test_masknet_shapes(mode, out_dim):
    net = MaskNet(24, 10, num_blocks=3, mode=mode)
    assert net.output_dim == out_dim
    assert net(torch.randn(4, 24)).shape == (4, out_dim)


def test_mask_block_mask_comes_from_the_instance():
    block = MaskBlock(embedding_dim=6, input_dim=5, output_dim=4)
    hidden = torch.randn(3, 5)
    a = block(torch.randn(3, 6), hidden)
    b = block(torch.randn(3, 6), hidden)
    assert a.shape == (3, 4) and not torch.allclose(a, b)


@pytest.mark.parametrize("pair", list(itertools.product(KINDS, KINDS)))
def test_dhen_layer_each_module_pair(pair):
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    layer = DHENLayer(5, 8, pair, num_heads=2, hidden_dim=16).eval()
    y = layer(x)
    assert y.shape == (4, 5, 8)
    # output is layer-normalised over d
    assert torch.allclose(y.mean(-1), torch.zeros(4, 5), atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


@pytest.mark.parametrize("ensemble", ["concat", "sum"])
def test_dhen_stack_changes_token_count_with_linear_shortcut(ensemble):
    net = DHEN(6, 8, [("masknet", "transformer"), ("mlp", "transformer")], num_out_tokens=3,
               ensemble=ensemble, hidden_dim=16)  # fmt: skip
    assert net(torch.randn(2, 6, 8)).shape == (2, 3, 8) and net.num_out_tokens == 3
    assert not isinstance(net.layers[0].shortcut, torch.nn.Identity)
    assert isinstance(net.layers[1].shortcut, torch.nn.Identity)
    assert len(net.layers) == 2


def test_dhen_rejects_unknown_module():
    with pytest.raises(ValueError, match="unknown DHEN module 'cnn'"):
        DHENLayer(3, 8, ("cnn", "mlp"))


# ---------------------------------------------------------------- encoders


def test_hashed_embedding_salts_features_apart():
    emb = HashedEmbedding(1000, 4)
    ids = torch.tensor([[3, 3]])
    out = emb(ids, torch.tensor([0, 1]))
    assert out.shape == (1, 2, 4)
    assert not torch.equal(out[0, 0], out[0, 1])  # same raw id, different features
    big = emb(torch.tensor([2**62, -5]), torch.tensor(0))  # any int64 is reduced into the table
    assert big.shape == (2, 4)


def test_dense_encoder_signed_log1p_tokens():
    enc = DenseEncoder(3, 8)
    x = torch.tensor([[1e6, -1e6, 0.0], [2.0, -2.0, 5.0], [0.0, 1.0, 1e9]])
    out = enc(x)
    assert out.shape == (3, 3, 8) and torch.isfinite(out).all()
    fresh = DenseEncoder(1, 4).eval()  # fresh running stats: normalisation is the identity
    tokens = fresh(torch.tensor([[1e6], [-1e6]]))
    expected = math.log1p(1e6) * fresh.weight[0] + fresh.bias[0]
    assert torch.allclose(tokens[0, 0], expected, rtol=1e-4)
    assert torch.allclose(tokens[1, 0] - fresh.bias[0], -(tokens[0, 0] - fresh.bias[0]))
    assert enc.train()(x[:1]).shape == (1, 3, 8)  # a batch of one still trains


def test_sequence_encoder_padding_really_masks():
    torch.manual_seed(0)
    enc = SequenceEncoder(8, max_len=6, num_heads=2, num_layers=2).eval()
    x = torch.randn(3, 6, 8)
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6, [True] * 6])
    out = enc(x, pad)
    assert out.shape == (3, 8)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 8) * 100  # change only padded positions
    x2[2] = torch.randn(6, 8)
    assert torch.allclose(enc(x2, pad), out, atol=1e-6)
    assert torch.equal(out[2], torch.zeros(8))  # all padding -> zero token, no NaN
    x3 = x.clone()
    x3[0, 1] += 1.0  # a real position does change the output
    assert not torch.allclose(enc(x3, pad)[0], out[0])
    with pytest.raises(ValueError, match="exceeds max_len"):
        enc(torch.randn(1, 7, 8), torch.zeros(1, 7, dtype=torch.bool))


def test_pretrained_encoder_one_token_per_vector():
    enc = PretrainedEncoder([4, 2], 8)
    x = torch.randn(5, 6)
    out = enc(x)
    assert out.shape == (5, 2, 8)
    assert torch.allclose(out[:, 1], enc.projections[1](x[:, 4:]))


# ---------------------------------------------------------------- SSL loss


def brute_force_ssl(user, pin, pin_ids, positive, log_q, tau, user_ids=None):
    """The paper's formula, row by row with Python loops."""
    losses = []
    for i in range(len(user)):
        if not positive[i]:
            continue
        pos = float(user[i] @ pin[i]) / tau - float(log_q[i])
        terms = [pos]
        for j in range(len(user)):
            if j == i or pin_ids[j] == pin_ids[i]:  # itself; an accidental hit
                continue
            if user_ids is not None and user_ids[j] == user_ids[i] and positive[j]:
                continue  # another positive of the same user
            terms.append(float(user[i] @ pin[j]) / tau - float(log_q[j]))
        losses.append(-(pos - math.log(sum(math.exp(t) for t in terms))))
    return sum(losses) / len(losses)


def test_ssl_loss_matches_brute_force_with_hits_and_logq():
    g = torch.Generator().manual_seed(1)
    n = 7
    user = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=-1)
    pin = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=-1)
    pin_ids = torch.tensor([10, 11, 10, 12, 13, 11, 14])  # rows 0/2 and 1/5 share a Pin
    positive = torch.tensor([True, True, False, False, True, False, True])
    log_q = -torch.rand(n, generator=g) * 5
    log_tau = torch.tensor(math.log(0.2))
    loss, logits = sampled_softmax_loss(user, pin, pin_ids, positive, log_q, log_tau)
    expected = brute_force_ssl(user, pin, pin_ids, positive, log_q, 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits.shape == (4, n)
    assert torch.isinf(logits).sum() == 2  # row 0 masks row 2's Pin, row 1 masks row 5's
    # without the masking the loss would differ
    distinct = torch.arange(n) + 100
    other, _ = sampled_softmax_loss(user, pin, distinct, positive, log_q, log_tau)
    assert other.item() != pytest.approx(expected, rel=1e-5)


def test_ssl_loss_masks_the_users_other_positives():
    g = torch.Generator().manual_seed(2)
    n = 8
    user = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=-1)
    pin = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=-1)
    pin_ids = torch.tensor([10, 11, 12, 13, 14, 10, 16, 17])  # rows 0/5 share a Pin
    user_ids = torch.tensor([1, 1, 1, 2, 2, 3, 2, 4])
    positive = torch.tensor([True, True, False, True, False, True, True, False])
    log_q = -torch.rand(n, generator=g) * 5
    log_tau = torch.tensor(math.log(0.3))
    loss, logits = sampled_softmax_loss(
        user, pin, pin_ids, positive, log_q, log_tau, user_ids=user_ids
    )
    expected = brute_force_ssl(user, pin, pin_ids, positive, log_q, 0.3, user_ids)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # masked, by hand: user 1's positives 0 and 1 mask each other (row 2 is user 1's
    # negative: it stays); user 2's positives 3 and 6 mask each other (row 4 stays);
    # rows 0 and 5 share Pin 10 (an accidental hit both ways): 2 + 2 + 2 = 6 cells
    assert torch.isinf(logits).sum() == 6
    # row 0's columns: itself, then rows 1..7 in batch order; row 1 and row 5 are masked
    assert torch.isinf(logits[0]).tolist() == [False, True, False, False, False, True, False, False]
    # the old call (no user ids) masks only the accidental hits, and gives another loss
    old, old_logits = sampled_softmax_loss(user, pin, pin_ids, positive, log_q, log_tau)
    assert torch.isinf(old_logits).sum() == 2
    assert old.item() == pytest.approx(brute_force_ssl(user, pin, pin_ids, positive, log_q, 0.3))
    assert old.item() != pytest.approx(expected, rel=1e-5)


def test_ssl_loss_gradient_reaches_log_tau_and_tau_is_clamped():
    user = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1).requires_grad_()
    pin = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    positive = torch.tensor([True] * 3 + [False] * 3)
    log_tau = torch.tensor(math.log(0.1), requires_grad=True)
    loss, _ = sampled_softmax_loss(user, pin, torch.arange(6), positive, torch.zeros(6), log_tau)
    loss.backward()
    assert log_tau.grad is not None and log_tau.grad.abs() > 0
    assert user.grad is not None
    assert temperature(torch.tensor(5.0), 0.01, 1.0).item() == pytest.approx(1.0)
    assert temperature(torch.tensor(-50.0), 0.01, 1.0).item() == pytest.approx(0.01)
    lo = torch.tensor(-50.0, requires_grad=True)  # clamped: tau is tau_min exactly
    loss_lo, logits = sampled_softmax_loss(user, pin, torch.arange(6), positive, torch.zeros(6), lo)
    expected = brute_force_ssl(user.detach(), pin, torch.arange(6), positive, torch.zeros(6), 0.01)
    assert loss_lo.item() == pytest.approx(expected, rel=1e-4)


def test_ssl_loss_without_positives_is_a_differentiable_zero():
    user = torch.randn(4, 3, requires_grad=True)
    log_tau = torch.tensor(0.0, requires_grad=True)
    loss, logits = sampled_softmax_loss(
        user, torch.randn(4, 3), torch.arange(4), torch.zeros(4, dtype=torch.bool),
        torch.zeros(4), log_tau,
    )  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0 and logits.shape == (0, 4)
    assert torch.equal(user.grad, torch.zeros(4, 3))
    assert recall_at_k(logits, 1).item() == 0.0


def test_recall_at_k_ranks_the_positive():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 3.0, float("-inf")]])
    assert recall_at_k(logits, 1).item() == 0.5
    assert recall_at_k(logits, 2).item() == 0.5
    assert recall_at_k(logits, 3).item() == 1.0
    assert torch.equal(recall_at_k(logits, 1, reduction="none"), torch.tensor([1.0, 0.0]))


def test_recall_at_k_ties_count_against_the_positive():
    logits = torch.zeros(3, 5)  # all equal: the positive ranks last among 5
    for k in range(1, 5):
        assert recall_at_k(logits, k).item() == 0.0
    assert recall_at_k(logits, 5).item() == 1.0
    tied_with_one = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # one other candidate ties
    assert recall_at_k(tied_with_one, 1).item() == 0.0
    assert recall_at_k(tied_with_one, 2).item() == 1.0


# ---------------------------------------------------------------- frequency estimator


def test_estimator_frequent_pin_gets_higher_q_and_state_round_trips():
    est = StreamingFrequencyEstimator(num_buckets=512, alpha=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        ids = [7]  # every batch
        if step % 10 == 0:
            ids.append(8)  # one batch in ten
        if step == 150:
            ids.append(9)  # once
        ids += torch.randint(1000, 10**9, (5,), generator=g).tolist()  # noise
        est.update(torch.tensor(ids), step)
    q = est.log_q(torch.tensor([7, 8, 9, 424242])).exp()
    assert q[0] > q[1] > q[2] > 0
    assert q[0].item() == pytest.approx(1.0, rel=0.05)
    assert q[1].item() == pytest.approx(0.1, rel=0.3)
    assert q[3] < q[1]  # never seen: rare

    restored = StreamingFrequencyEstimator(num_buckets=512, alpha=0.1)
    restored.load_state_dict(est.state_dict())
    ids = torch.tensor([7, 8, 9])
    assert torch.equal(restored.log_q(ids), est.log_q(ids))
    # the next day's Trainer restarts at step 0: time still moves forward
    restored.update(torch.tensor([7]), 0)
    assert int(restored.clock) == 300
    assert restored.log_q(torch.tensor([7])).exp().item() == pytest.approx(1.0, rel=0.05)


def test_splitmix64_matches_the_reference_outputs():
    # splitmix64 seeded with 0 outputs mix(GAMMA), mix(2 GAMMA), ...: its published first
    # two values, and a Python big-int reference of the finalizer on edge cases
    mask = (1 << 64) - 1

    def reference(x: int) -> int:
        z = x & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    state = torch.tensor([_to_int64(GAMMA), _to_int64(2 * GAMMA)])
    assert [v & mask for v in splitmix64(state).tolist()] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
    ]
    xs = [0, 1, 7, -5, 2**63 - 1, -(2**63), 123456789012345]
    assert [v & mask for v in splitmix64(torch.tensor(xs)).tolist()] == list(map(reference, xs))


def test_estimator_hashes_are_independent():
    est = StreamingFrequencyEstimator(num_buckets=2**16, alpha=0.1, num_hashes=3)
    # the affine hashes put 7 and 7 + 2^16 in one bucket under every row
    old = est._buckets(torch.tensor([7, 7 + 2**16]))  # [3, 2]
    assert (old[:, 0] != old[:, 1]).any()
    # find an id that collides with 7 under hash 0: another row separates them
    ids = torch.arange(8, 2_000_000)
    buckets = est._buckets(ids)
    target = est._buckets(torch.tensor([7]))
    partner = int(ids[buckets[0] == target[0, 0]][0])
    pair = est._buckets(torch.tensor([7, partner]))
    assert pair[0, 0] == pair[0, 1] and (pair[1:, 0] != pair[1:, 1]).all()
    # seen at different rates (7 every step, the partner every 10th), they get different Q
    for step in range(200):
        est.update(torch.tensor([7, partner] if step % 10 == 0 else [7]), step)
    q = est.log_q(torch.tensor([7, partner])).exp()
    assert q[0].item() == pytest.approx(1.0)
    # the partner's own gaps, as if alone: 1 at step 0 (t + 1), then 19 gaps of 10 with
    # alpha 0.1: B = 10 - 9 * 0.9^19; hash 0 alone (shared with 7) would have said B = 1
    assert q[1].item() == pytest.approx(1 / (10 - 9 * 0.9**19), rel=1e-5)


def test_estimator_smoothing_on_non_periodic_gaps():
    est = StreamingFrequencyEstimator(num_buckets=64, alpha=0.1, num_hashes=1)
    for step in (9, 19, 21):
        est.update(torch.tensor([5]), step)
    # by hand: the first sighting at t=9 knows only the time since the stream began, t + 1 =
    # 10; at 19: 0.9 * 10 + 0.1 * (19 - 9) = 10; at 21: 0.9 * 10 + 0.1 * (21 - 19) = 9.2
    assert est.log_q(torch.tensor([5])).exp().item() == pytest.approx(1 / 9.2, rel=1e-6)
    with pytest.raises(ValueError, match="num_hashes"):
        StreamingFrequencyEstimator(num_hashes=0)


# ---------------------------------------------------------------- towers and DERMModel


@pytest.mark.parametrize("schema", [full_schema(), no_ctx_schema()], ids=["full", "no_ctx"])
def test_derm_model_forward_from_schema(schema):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = DERMModel(schema, cfg)
    batch = make_batch(schema, cfg, 16)
    out = model(batch)
    assert out["user"].shape == (16, 16) and out["pin"].shape == (16, 16)
    assert out["logits"].shape == (16, 2)
    for key in ("user", "pin"):
        assert torch.allclose(out[key].norm(dim=-1), torch.ones(16), atol=1e-5)
    assert all(torch.isfinite(v).all() for v in out.values())
    (out["logits"].sum() + out["user"].sum()).backward()
    assert model.features.embedding.table.weight.grad is not None
    model.eval()
    assert torch.allclose(model.user_embedding(batch), model(batch)["user"])
    assert torch.allclose(model.pin_embedding(batch), model(batch)["pin"])


def test_derm_model_ignores_padded_sequence_positions():
    schema, cfg = full_schema(), small_cfg()
    model = DERMModel(schema, cfg).eval()
    batch = make_batch(schema, cfg, 8)
    user = model.user_embedding(batch)
    # padding is id 0: perturbing the table row it hashes to must not move any user embedding
    emb = model.features.embedding
    slot = model.features.user_seq_slots[0]
    pad_row = int(torch.remainder(slot * emb.SALT, cfg.num_buckets))
    seq = batch["user_seq"][:, 0]
    used = torch.remainder(seq[seq > 0] + slot * emb.SALT, cfg.num_buckets)
    cat_rows = torch.remainder(batch["user_cat"] + model.features.user_cat_slots * emb.SALT,
                               cfg.num_buckets)  # fmt: skip
    assert pad_row not in used.tolist() and pad_row not in cat_rows.flatten().tolist()
    with torch.no_grad():
        emb.table.weight[pad_row] += 10.0
    assert torch.allclose(model.user_embedding(batch), user, atol=1e-6)
    changed = dict(batch, user_seq=batch["user_seq"].clone())
    changed["user_seq"][1, 0, 0] += 1  # a real position does move it
    assert not torch.allclose(model.user_embedding(changed)[1], user[1])


def test_tower_layout_orders_columns_by_contract():
    layout = tower_layout(full_schema(), small_cfg())
    assert layout["user"].cat_columns == ("user_id", "user_country", "user_age_bucket")
    assert layout["ctx"].cat_columns == ("ctx_surface", "ctx_hour", "ctx_position", "surface")
    assert (layout["pin"].n_dense, layout["pin"].pre_dims) == (1, (32,))
    assert (layout["user"].n_seq, layout["ctx"].n_dense) == (1, 0)
    no_ids = tower_layout(full_schema(), small_cfg(id_features=False))
    assert no_ids["pin"].cat_columns == ("pin_category", "pin_advertiser_id")


def test_model_needs_features_in_entity_towers():
    schema = LogSchema("int64", (FeatureSpec("user_country", "user", "categorical"),))
    DERMModel(schema, small_cfg())  # the pin tower still has pin_id
    with pytest.raises(ValueError, match="pin tower has no features"):
        DERMModel(schema, small_cfg(id_features=False))


def test_feature_signature_tracks_schema_and_dimension():
    base = DERMModel(full_schema(), small_cfg()).feature_signature()
    assert json.loads(json.dumps(base)) == base
    assert DERMModel(full_schema(), small_cfg()).feature_signature() == base
    other_d = ModelConfig(token_dim=8, embedding_dim=32, num_buckets=1024, mlp_hidden=16)
    assert DERMModel(full_schema(), other_d).feature_signature() != base
    assert DERMModel(full_schema("string"), small_cfg()).feature_signature() != base
    assert DERMModel(no_ctx_schema(), small_cfg()).feature_signature() != base


def test_model_config_round_trip_and_primary_task():
    cfg = small_cfg(dhen_layers=(("mlp", "mlp"),), tasks=("click", "conversion", "save"))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.primary_task("ctr") == "click" and cfg.primary_task("cvr") == "conversion"
    with pytest.raises(ValueError, match="unknown model"):
        cfg.primary_task("ltv")
    with pytest.raises(ValueError, match="not in tasks"):
        small_cfg(tasks=("click",)).primary_task("cvr")
    three_heads = DERMModel(full_schema(), cfg)
    assert three_heads(make_batch(full_schema(), cfg, 4))["logits"].shape == (4, 3)


def test_tower_batch_norm_removes_the_direction_all_outputs_share():
    """Why `tower_batch_norm` exists: trained on the task loss, a tower's outputs drift into
    one shared direction (pairwise cosine 0.98 on the demo log), where u.p / tau hardly
    varies and the SSL loss learns little. Simulated by a large shared offset before the
    normalisation: plain outputs collapse, centred ones stay spread. Eval mode uses the
    running statistics, and a training batch of one row (a day's last) passes through them."""
    schema = full_schema()

    def mean_cosine(tower_batch_norm: bool) -> float:
        torch.manual_seed(0)
        cfg = small_cfg(tower_batch_norm=tower_batch_norm)
        model = DERMModel(schema, cfg).train()
        with torch.no_grad():
            model.pin_tower.project.bias.copy_(torch.linspace(-5, 5, cfg.embedding_dim))
        p = model.pin_embedding(make_batch(schema, cfg, 256))
        off_diagonal = ~torch.eye(256, dtype=torch.bool)
        return float((p @ p.T)[off_diagonal].mean())

    plain, centred = mean_cosine(False), mean_cosine(True)
    print(
        f"mean pairwise cosine of 256 Pins, shared offset: plain {plain:.3f}, centred {centred:.3f}"
    )
    assert plain > 0.9 and abs(centred) < 0.1

    cfg = small_cfg()
    model = DERMModel(schema, cfg).train()
    batch = make_batch(schema, cfg, 64)
    model(batch)  # moves the running statistics
    one = {k: v[:1] for k, v in batch.items()}
    assert torch.allclose(model(one)["pin"].norm(dim=-1), torch.ones(1))
    model.eval()
    with torch.no_grad():
        whole, single = model(batch)["pin"], model(one)["pin"]
    torch.testing.assert_close(whole[:1], single)  # eval: a row does not depend on its batch
    saved_before = {k: v for k, v in cfg.to_dict().items() if k != "tower_batch_norm"}
    assert ModelConfig.from_dict(saved_before).tower_batch_norm is False
