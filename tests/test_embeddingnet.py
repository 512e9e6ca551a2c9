"""EmbeddingNet's additions: SVD++'s implicit term (model.implicit) and the dot-product branch (model.dot)."""
from __future__ import annotations

import pytest
import torch

from distrib.config import load_config
from distrib.errors import UserError
from distrib.models import build_model
from tests.test_models import N_ITEMS, N_USERS, toy_train


def net(*overrides: str):
    cfg = load_config(None, ["model.n_factors=3", "model.hidden=[4]", "model.embedding_dropout=0",
                             "model.dropouts=[0]", *overrides]).model
    return build_model(cfg, N_USERS, N_ITEMS, 1.0, 5.0)


def test_implicit_term_adds_the_normalised_sum_of_the_rated_movies_vectors():
    plain, model = net(), net("model.implicit=true")
    assert not plain.needs_train_ratings and model.needs_train_ratings
    train = toy_train()
    model.attach_train(train)
    user = 0  # rated movies 0 and 4 in toy_train
    assert model.rated[user].nonzero().flatten().tolist() == [0, 4]
    assert model.rated[user, 0].item() == pytest.approx(2 ** -0.5, rel=1e-3)
    expected = model.u.weight[user] + (model.implicit[0] + model.implicit[4]) * model.rated[user, 0].float()
    assert torch.allclose(model.user_vectors(torch.tensor([user]))[0], expected, atol=1e-6)


def test_implicit_checkpoint_carries_who_rated_what():
    model = net("model.implicit=true")
    model.attach_train(toy_train())
    fresh = net("model.implicit=true")
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    users, items = torch.tensor([0, 5]), torch.tensor([2, 4])
    assert torch.equal(model(users, items), fresh(users, items))
    cfg = load_config(None, ["model.implicit=true"]).model
    with pytest.raises(UserError, match="dense"):
        build_model(cfg, 200_000, 30_000, 1.0, 5.0)


def test_dot_adds_the_vectors_dot_product_to_the_logit():
    plain, model = net(), net("model.dot=true")
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        model.u.weight.fill_(0.5), model.m.weight.fill_(0.5)
        plain.u.weight.fill_(0.5), plain.m.weight.fill_(0.5)
    users, items = torch.tensor([1]), torch.tensor([2])
    to_logit = lambda pred: torch.logit((pred - 0.5) / 5.0)  # noqa: E731  (the output's scaled sigmoid, undone)
    assert (to_logit(model(users, items)) - to_logit(plain(users, items))).item() == pytest.approx(0.75, rel=1e-4)
