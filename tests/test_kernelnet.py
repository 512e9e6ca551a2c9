"""kernelNet (model.name=kernelnet): the kernel gates the weights, the input is the training matrix, the
regularisation sums to one lambda term per pass, and the checkpoint predicts on its own."""
from __future__ import annotations

import pytest
import torch

from distrib.config import load_config
from distrib.models import Ensemble, KernelNet, build_model, build_penalty
from distrib.models.kernelnet import KernelLayer
from tests.test_models import N_ITEMS, N_USERS, toy_train

SMALL = ["model.name=kernelnet", "model.kernelnet.hidden=6", "model.kernelnet.kernel_dim=2"]


def kernelnet(*overrides: str):
    cfg = load_config(None, [*SMALL, *overrides]).model
    return cfg, build_model(cfg, N_USERS, N_ITEMS, 1.0, 5.0)


def test_the_kernel_switches_off_weights_whose_vectors_lie_apart():
    layer = KernelLayer(2, 3, kernel_dim=1)
    with torch.no_grad():
        layer.u.copy_(torch.tensor([[0.0], [2.0]]))
        layer.v.copy_(torch.tensor([[0.0], [0.5], [2.0]]))
    expected = torch.tensor([[1.0, 0.75, 0.0], [0.0, 0.0, 1.0]])  # max(0, 1 - |u - v|^2)
    assert torch.allclose(layer.kernel(), expected)
    x = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(layer(x, layer.kernel()), x @ (layer.weight * expected) + layer.bias)


def test_kernelnet_reads_the_training_matrix_and_predicts_one_clamped_value_per_pair():
    cfg, model = kernelnet()
    assert type(model) is KernelNet and model.needs_train_ratings and model.owns_penalty
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(N_USERS, 6), (6, 6), (6, N_USERS)]
    train = toy_train()
    model.attach_train(train)
    assert model.ratings[train.items, train.users].float().tolist() == train.ratings.tolist()
    model.eval()
    users, items = torch.tensor([0, 3, 6, 6]), torch.tensor([4, 0, 1, 1])
    pred = model(users, items)
    assert pred.shape == (4,) and pred[2] == pred[3] and pred.min() >= 1.0 and pred.max() <= 5.0
    assert model.item_vectors().shape == (N_ITEMS, 6)


def test_kernelnet_regularisation_sums_to_one_lambda_term_per_pass():
    cfg, model = kernelnet("model.kernelnet.l2=3.0", "model.kernelnet.sparsity=0.5")
    train = toy_train()
    model.attach_train(train)
    full = sum(0.5 * 3.0 * layer.weight.pow(2).sum() + 0.5 * 0.5 * layer.kernel().pow(2).sum()
               for layer in model.layers)
    users, items = torch.as_tensor(train.users), torch.as_tensor(train.items)
    model.train()
    model(users[:4], items[:4])  # forward keeps the step's kernels for the penalty
    epoch = model.penalty(users[:4], items[:4]) + model.penalty(users[4:], items[4:])
    assert epoch.item() == pytest.approx(full.item(), rel=1e-5)
    assert build_penalty(cfg, model) == model.penalty


def test_kernelnet_checkpoint_carries_its_input_and_it_joins_an_ensemble():
    _, model = kernelnet()
    model.attach_train(toy_train())
    _, fresh = kernelnet()
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    users, items = torch.tensor([0, 5]), torch.tensor([2, 4])
    assert torch.equal(model(users, items), fresh(users, items))
    cfg = load_config(None, ["model.name=ensemble", "model.members=[autorec,mf,kernelnet]",
                             "model.kernelnet.hidden=4", "model.autorec.hidden=4", "model.n_factors=2"]).model
    ensemble = build_model(cfg, N_USERS, N_ITEMS, 1.0, 5.0)
    assert type(ensemble) is Ensemble and type(ensemble.members[2]) is KernelNet


def test_kernelnet_settings_are_checked():
    for bad in ("model.kernelnet.kernel_dim=0", "model.kernelnet.sparsity=-1", "model.kernelnet.layers=0"):
        with pytest.raises(Exception, match="kernelnet"):
            load_config(None, ["model.name=kernelnet", bad])
