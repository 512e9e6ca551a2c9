"""The models chosen by model.name: selection, shapes, the penalties the trainer adds, config rules, and
the new models through the real distributed job (1 and 2 gloo ranks give the same weights)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distrib.config import load_config
from distrib.errors import UserError
from distrib.models import BiasedMF, EmbeddingNet, Ensemble, IAutoRec, UAutoRec, build_model, build_penalty
from tests.helpers import check_ok, max_rel_diff, summary, tiny, train_cli, weights

N_USERS, N_ITEMS = 7, 5
ENSEMBLE = ["model.name=ensemble", "model.members=[autorec,mf]", "model.autorec.hidden=16", "model.n_factors=4",
            "model.factor_reg=0.1", "model.bias_reg=0.01"]


def model_for(*overrides: str):
    cfg = load_config(None, list(overrides))
    return cfg.model, build_model(cfg.model, N_USERS, N_ITEMS, 1.0, 5.0)


def toy_train() -> SimpleNamespace:
    users = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1], dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4, 0, 1, 4, 3], dtype=np.int64)
    ratings = np.array([5, 4, 3, 2, 1, 4, 5, 3, 2], dtype=np.float32)
    return SimpleNamespace(users=users, items=items, ratings=ratings)


@pytest.mark.parametrize("name, cls", [("embeddingnet", EmbeddingNet), ("mf", BiasedMF), ("autorec", IAutoRec),
                                       ("uautorec", UAutoRec)])
def test_model_name_selects_the_model_and_predictions_have_one_value_per_pair(name, cls):
    _, model = model_for(f"model.name={name}")
    assert type(model) is cls
    if model.needs_train_ratings:
        model.attach_train(toy_train())
    users, items = torch.tensor([0, 3, 6, 6]), torch.tensor([4, 0, 1, 1])
    model.eval()
    pred = model(users, items)
    assert pred.shape == (4,) and pred.dtype == torch.float32
    assert pred[2] == pred[3], "the same pair gets the same prediction"


def test_embeddingnet_stays_the_default_with_no_penalty():
    cfg, model = model_for()
    assert cfg.name == "embeddingnet" and type(model) is EmbeddingNet
    assert build_penalty(cfg, model) is None


def test_unknown_model_name_and_bad_settings_are_rejected():
    with pytest.raises(UserError, match="model.name"):
        load_config(None, ["model.name=svd"])
    with pytest.raises(UserError, match="factor_reg"):
        load_config(None, ["model.factor_reg=-1"])
    with pytest.raises(UserError, match="model.members"):
        load_config(None, ["model.name=ensemble", "model.members=[mf]"])
    with pytest.raises(UserError, match="model.members"):
        load_config(None, ["model.name=ensemble", "model.members=[mf,embeddingnet]"])
    with pytest.raises(UserError, match="member_weights"):
        load_config(None, [*ENSEMBLE, "model.member_weights=[1.0]"])
    with pytest.raises(UserError, match="autorec.l2"):
        load_config(None, ["model.name=autorec", "model.autorec.l2=-1"])


def test_mf_predicts_biases_plus_dot_and_clamps_only_in_eval():
    _, model = model_for("model.name=mf", "model.n_factors=3")
    with torch.no_grad():
        model.u.weight.fill_(2.0)
        model.m.weight.fill_(1.0)
        model.user_bias.weight.fill_(0.5)
    users, items = torch.tensor([1]), torch.tensor([2])
    model.train()
    assert model(users, items).item() == pytest.approx(3.0 + 0.5 + 6.0)  # global bias starts mid-scale
    model.eval()
    assert model(users, items).item() == 5.0


def test_per_rating_penalty_counts_each_rating_of_the_batch():
    cfg, model = model_for("model.name=mf", "model.n_factors=3", "model.factor_reg=0.1", "model.bias_reg=0.01")
    penalty = build_penalty(cfg, model)
    users, items = torch.tensor([1, 1, 2]), torch.tensor([0, 3, 3])
    u, m = model.u.weight, model.m.weight
    with torch.no_grad():
        model.user_bias.weight.fill_(0.3)
        model.item_bias.weight.fill_(-0.2)
        expected = 0.1 * (2 * u[1].pow(2).sum() + u[2].pow(2).sum() + m[0].pow(2).sum() + 2 * m[3].pow(2).sum())
        expected += 0.01 * (3 * 0.3 ** 2 + 3 * 0.2 ** 2)
        assert penalty(users, items).item() == pytest.approx(expected.item(), rel=1e-5)
    penalty(users, items).backward()
    assert u.grad[0].abs().sum() == 0 and m.grad[1].abs().sum() == 0, "rows outside the batch are not touched"
    assert model.user_bias.weight.grad[1, 0].item() == pytest.approx(2 * 0.01 * 2 * 0.3)


def test_embeddingnet_with_bias_gets_the_same_per_rating_penalty():
    cfg, model = model_for("model.bias=true", "model.factor_reg=0.1", "model.bias_reg=0.01")
    users, items = torch.tensor([0, 2]), torch.tensor([1, 1])
    expected = 0.1 * (model.u(users).pow(2).sum() + model.m(items).pow(2).sum())
    assert build_penalty(cfg, model)(users, items).item() == pytest.approx(expected.item(), rel=1e-5)  # biases 0


def test_autorec_input_is_the_training_matrix_and_its_l2_sums_to_lambda_per_epoch():
    cfg, model = model_for("model.name=autorec", "model.autorec.hidden=6", "model.autorec.l2=3.0")
    train = toy_train()
    model.attach_train(train)
    assert model.ratings.shape == (N_ITEMS, N_USERS)
    assert model.ratings[train.items, train.users].float().tolist() == train.ratings.tolist()
    assert int(model.ratings.ne(0).sum()) == len(train.ratings)
    full = 0.5 * 3.0 * (model.encoder.weight.pow(2).sum() + model.decoder.weight.pow(2).sum())
    users, items = torch.as_tensor(train.users), torch.as_tensor(train.items)
    epoch = model.penalty(users[:4], items[:4]) + model.penalty(users[4:], items[4:])
    assert epoch.item() == pytest.approx(full.item(), rel=1e-5)
    assert build_penalty(cfg, model) == model.penalty


def test_autorec_checkpoint_carries_its_input():
    _, model = model_for("model.name=autorec", "model.autorec.hidden=6")
    model.attach_train(toy_train())
    _, fresh = model_for("model.name=autorec", "model.autorec.hidden=6")
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    users, items = torch.tensor([0, 5]), torch.tensor([2, 4])
    assert torch.equal(model(users, items), fresh(users, items))


def test_uautorec_encodes_each_users_row_and_predicts_from_it_alone():
    cfg, model = model_for("model.name=uautorec", "model.uautorec.hidden=6", "model.uautorec.l2=3.0")
    assert (model.encoder.in_features, model.decoder.out_features) == (N_ITEMS, N_ITEMS)
    train = toy_train()
    model.attach_train(train)
    model.train()  # unclamped: an untrained model's predictions lie below the rating range
    users, items = torch.tensor([0, 0, 3]), torch.tensor([1, 4, 0])
    before = model(users, items)
    with torch.no_grad():  # another user's ratings change: user 0's and 3's predictions do not
        model.ratings[:, 1] = 5.0
    assert torch.equal(model(users, items), before)
    with torch.no_grad():
        model.ratings[2, 0] = 1.0  # one of user 0's own ratings changes: user 0's predictions do
    after = model(users, items)
    assert not torch.equal(after[:2], before[:2]) and after[2] == before[2]
    assert model.item_vectors().shape == (N_ITEMS, 6)
    full = 0.5 * 3.0 * (model.encoder.weight.pow(2).sum() + model.decoder.weight.pow(2).sum())
    assert build_penalty(cfg, model)(torch.as_tensor(train.users), torch.as_tensor(train.items)).item() == \
        pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("overrides", [
    ["model.name=autorec", "model.autorec.hidden=6"], ["model.name=uautorec", "model.uautorec.hidden=6"],
    ["model.name=kernelnet", "model.kernelnet.hidden=6", "model.kernelnet.kernel_dim=2"]],
    ids=["autorec", "uautorec", "kernelnet"])
def test_hide_target_trains_each_rating_as_if_it_were_held_out(overrides):
    """model.hide_target: a training rating's prediction is the one the model makes for it in eval mode with that
    rating taken out of the input matrix; without the option the rating's own value is in its input."""
    cfg = load_config(None, [*overrides, "model.hide_target=true"]).model
    model = build_model(cfg, N_USERS, N_ITEMS, -100.0, 100.0)  # a range wide enough that eval never clamps
    train = toy_train()
    model.attach_train(train)
    users, items = torch.as_tensor(train.users), torch.as_tensor(train.items)
    model.train()
    hidden = model(users, items)
    hidden.sum().backward()  # it trains: every weight matrix gets a gradient
    assert all(p.grad is not None for name, p in model.named_parameters() if "weight" in name)
    model.hide_target = False
    shown = model(users, items).detach()
    model.eval()
    for j in range(len(users)):
        with torch.no_grad():
            own = model.ratings[items[j], users[j]].clone()
            model.ratings[items[j], users[j]] = 0.0
            held_out = model(users[j:j + 1], items[j:j + 1])
            model.ratings[items[j], users[j]] = own
        assert hidden[j].item() == pytest.approx(held_out.item(), abs=1e-5)
    assert (hidden.detach() - shown).abs().max() > 1e-4


def test_autorec_refuses_a_matrix_too_large_to_keep_dense():
    cfg = load_config(None, ["model.name=autorec"]).model
    with pytest.raises(UserError, match="dense"):
        build_model(cfg, 200_000, 30_000, 1.0, 5.0)


def test_ensemble_trains_each_member_on_its_own_and_predicts_their_weighted_mean():
    cfg, model = model_for(*ENSEMBLE, "model.member_weights=[3,1]")
    assert type(model) is Ensemble and [type(m) for m in model.members] == [IAutoRec, BiasedMF]
    model.attach_train(toy_train())
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 4])
    model.train()
    rows = model(users, items)
    assert rows.shape == (2, 3)
    model.eval()
    members = [m.eval()(users, items) for m in model.members]
    mean = (0.75 * members[0] + 0.25 * members[1]).clamp(1, 5)
    assert torch.allclose(model(users, items), mean)
    penalty = build_penalty(cfg, model)
    mf_penalty = 0.1 * (model.members[1].u(users).pow(2).sum() + model.members[1].m(items).pow(2).sum())
    assert penalty(users, items).item() == pytest.approx((model.members[0].penalty(users, items) + mf_penalty).item(),
                                                         rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_args", [ENSEMBLE, ["model.name=autorec", "model.autorec.hidden=16"],
                                        ["model.name=kernelnet", "model.kernelnet.hidden=16", "model.hide_target=true"],
                                        ["model.name=uautorec", "model.uautorec.hidden=16", "model.hide_target=true"],
                                        ["model.implicit=true", "model.dot=true", "model.dropouts=[0]",
                                         "model.embedding_dropout=0"]],
                         ids=["ensemble", "autorec", "kernelnet", "uautorec", "embeddingnet-implicit-dot"])
def test_new_models_train_in_the_distributed_job_with_the_same_weights_on_1_and_2_ranks(tmp_path, model_args):
    args = [*model_args, "train.weight_decay=0", "train.epochs=2"]
    one = check_ok(train_cli(tiny(tmp_path, "w1", *args)))
    check_ok(train_cli(tiny(tmp_path, "w2", *args), nproc=2))
    # an ensemble's train figure is its members' mean loss, and its epoch line says so
    assert ("[001/002] train (mean of 2 members): " in one.stdout) == (model_args is ENSEMBLE), one.stdout[-2000:]
    assert summary(tmp_path / "w2")["world_size"] == 2
    assert math.isfinite(summary(tmp_path / "w2")["test_rmse"])
    assert max_rel_diff(weights(tmp_path / "w1/checkpoints/last.pt"), weights(tmp_path / "w2/checkpoints/last.pt")) <= 1e-4


def test_adamw_decays_weights_apart_from_the_gradient():
    """train.optimizer=adamw: a step with a zero gradient shrinks each weight by exactly lr * weight_decay;
    adam (the article's) adds the decay to the gradient instead, which Adam then normalises."""
    from distrib.training.trainer import build_optimizer

    for name, expected in (("adamw", 1 - 1e-2 * 0.5), ("adam", None)):
        cfg = load_config(None, [f"train.optimizer={name}", "train.lr=1e-2", "train.lr_scaling=none",
                                 "train.weight_decay=0.5", "train.betas=[0.9,0.99]"])
        layer = torch.nn.Linear(4, 3)
        before = layer.weight.detach().clone()
        optimizer = build_optimizer(layer, cfg, torch.device("cpu"))
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
        for p in layer.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        if expected is None:  # Adam: the L2 gradient wd * w, normalised: each weight moves by about lr
            assert torch.allclose((before - layer.weight).abs(), torch.full_like(before, 1e-2), rtol=1e-3)
        else:
            assert torch.allclose(layer.weight, before * expected, rtol=1e-6)


@pytest.mark.parametrize("name, tables, needs_ratings, owns_penalty", [
    ("embeddingnet", {"user", "movie"}, False, False),
    ("mf", {"user", "movie", "user_bias", "movie_bias"}, False, False),
    ("autorec", set(), True, True),
    ("uautorec", set(), True, True),
])
def test_each_model_says_what_it_needs(name, tables, needs_ratings, owns_penalty):
    _, model = model_for(f"model.name={name}")
    assert set(model.embedding_tables()) == tables
    assert all(isinstance(t, torch.nn.Embedding) for t in model.embedding_tables().values())
    assert (model.needs_train_ratings, model.owns_penalty) == (needs_ratings, owns_penalty)
    _, with_bias = model_for("model.bias=true")
    assert set(with_bias.embedding_tables()) == {"user", "movie", "user_bias", "movie_bias"}
    _, ensemble = model_for(*ENSEMBLE)
    assert ensemble.needs_train_ratings and ensemble.owns_penalty
