"""The baseline predictor (model.name=bias): its start is the shrunk-means estimate, it trains like the other
models, and a run beats the global mean."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distrib.config import load_config
from distrib.data import load_dataset
from distrib.models import BiasBaseline, build_model, build_penalty
from distrib.models.bias import ITEM_SHRINKAGE, USER_SHRINKAGE
from tests.helpers import check_ok, tiny, train_cli


def ratings(seed: int = 0, n: int = 400, n_users: int = 20, n_items: int = 15):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(users=rng.integers(0, n_users, n), items=rng.integers(0, n_items - 1, n),  # one movie unrated
                           ratings=rng.integers(1, 6, n).astype(np.float32))


def test_starts_at_the_shrunk_mean_deviations():
    train = ratings()
    model = BiasBaseline(20, 15, 1.0, 5.0)
    model.attach_train(train)
    mean = train.ratings.astype(np.float64).mean()
    item = np.zeros(15)
    for i in range(15):  # written out per movie and per user, as the definition reads
        rated = train.items == i
        item[i] = (train.ratings[rated] - mean).sum() / (rated.sum() + ITEM_SHRINKAGE)
    user = np.zeros(20)
    for u in range(20):
        rated = train.users == u
        user[u] = (train.ratings[rated] - mean - item[train.items[rated]]).sum() / (rated.sum() + USER_SHRINKAGE)
    assert model.global_bias.item() == pytest.approx(mean, rel=1e-6)
    np.testing.assert_allclose(model.item_bias.weight[:, 0].detach().numpy(), item, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.user_bias.weight[:, 0].detach().numpy(), user, rtol=1e-5, atol=1e-7)
    assert model.item_bias.weight[14].item() == 0.0  # no rating: no deviation from the mean


def test_predicts_mean_plus_biases_clamped_to_the_scale_in_eval():
    model = BiasBaseline(3, 2, 1.0, 5.0)
    with torch.no_grad():
        model.global_bias.fill_(3.5)
        model.user_bias.weight.copy_(torch.tensor([[0.5], [-0.25], [2.0]]))
        model.item_bias.weight.copy_(torch.tensor([[0.25], [-1.0]]))
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0])
    assert model(users, items).tolist() == [4.25, 2.25, 5.75]  # training: unclamped, the gradient stays alive
    assert model.eval()(users, items).tolist() == [4.25, 2.25, 5.0]


def test_registered_and_regularised_by_bias_reg_alone():
    cfg = load_config(None, ["model.name=bias", "model.bias_reg=0.5", "model.factor_reg=0.1"]).model
    model = build_model(cfg, 4, 3, 1.0, 5.0)
    assert isinstance(model, BiasBaseline)
    with torch.no_grad():
        model.user_bias.weight.fill_(2.0)
        model.item_bias.weight.fill_(1.0)
    penalty = build_penalty(cfg, model)
    # per rating: 0.5 * (2^2 + 1^2); factor_reg has no factors to act on
    assert penalty(torch.tensor([0, 1]), torch.tensor([2, 2])).item() == pytest.approx(2 * 0.5 * 5.0)


@pytest.mark.slow
def test_a_run_beats_the_global_mean(tmp_path):
    common = ["data.synthetic.n_ratings=30000", "train.epochs=4", "train.batch_size=1000"]
    check_ok(train_cli(tiny(tmp_path, "bias", "model.name=bias", *common)))
    bias = json.loads((tmp_path / "bias" / "summary.json").read_text())
    data = load_dataset(load_config(None, tiny(tmp_path, "bias", *common)).data)  # the split the runs read
    mean = float(np.mean(data.train.ratings))
    global_mean_rmse = float(np.sqrt(np.mean((np.asarray(data.test.ratings) - mean) ** 2)))
    assert bias["test_rmse"] < global_mean_rmse - 0.02
