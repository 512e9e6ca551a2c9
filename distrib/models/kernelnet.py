"""Sparse FC / kernelNet (Muller et al., ICML 2018), the local part of GLocal-K (Han et al., CIKM 2021),
`model.name=kernelnet`: an item-based autoencoder, like I-AutoRec, whose every weight matrix is multiplied
element-wise by a kernel between learned vectors of its inputs and its outputs.

    layer(x) = x (W * K) + b,   K[j, k] = max(0, 1 - |u_j - v_k|^2),   u_j, v_k in R^kernel_dim

so a weight is switched off (K = 0) wherever its input's and output's vectors lie more than 1 apart: the
network learns its own sparse connectivity. `model.kernelnet.layers` sigmoid layers of `hidden` units, then an
identity layer back to one rating per user. Regularisation per pass over the training ratings, spread over
the batches as I-AutoRec's: lambda_2/2 |W|^2 (`l2`) + lambda_s/2 |K|^2 (`sparsity`), every layer.

The input (each movie's column of training ratings) is kept and read as I-AutoRec does (`ItemColumns`), and
`model.hide_target` takes each trained rating out of its own input as there.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from distrib.models.autorec import ItemColumns

KERNEL_INIT_STD = 1e-3  # the vectors start together: every kernel value near 1, a dense layer at first


class KernelLayer(nn.Module):
    """A dense layer whose weights are gated by the RBF-like kernel between input and output vectors."""

    def __init__(self, n_in: int, n_out: int, kernel_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.u = nn.Parameter(torch.randn(n_in, kernel_dim) * KERNEL_INIT_STD)
        self.v = nn.Parameter(torch.randn(n_out, kernel_dim) * KERNEL_INIT_STD)
        bound = math.sqrt(6.0 / (n_in + n_out))  # Glorot uniform, as the published code
        nn.init.uniform_(self.weight, -bound, bound)

    def kernel(self) -> torch.Tensor:
        dist = (self.u.pow(2).sum(1, keepdim=True) + self.v.pow(2).sum(1) - 2.0 * self.u @ self.v.T).clamp(min=0)
        return (1.0 - dist).clamp(min=0)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight * kernel)


class KernelNet(ItemColumns):
    owns_penalty = True

    def __init__(self, n_users: int, n_items: int, hidden: int, layers: int, kernel_dim: int, l2: float,
                 sparsity: float, rating_min: float, rating_max: float, hide_target: bool = False):
        super().__init__(n_users, n_items, "kernelnet", rating_min, rating_max, hide_target)
        sizes = [n_users] + [hidden] * layers + [n_users]
        self.layers = nn.ModuleList(KernelLayer(a, b, kernel_dim) for a, b in zip(sizes[:-1], sizes[1:]))
        self.l2, self.sparsity = float(l2), float(sparsity)
        self._kernels: list[torch.Tensor] | None = None  # this step's kernels, reused by penalty()

    def _decode(self, x: torch.Tensor, codes_only: bool = False) -> torch.Tensor:
        kernels = [layer.kernel() for layer in self.layers]
        self._kernels = kernels if self.training else None
        last = len(self.layers) - 1
        for i, (layer, kernel) in enumerate(zip(self.layers, kernels)):
            if codes_only and i == last:
                return x
            x = layer(x, kernel)
            if i < last:
                x = torch.sigmoid(x)
        return x

    def _predict_hidden_target(self, columns: torch.Tensor, row: torch.Tensor, users: torch.Tensor,
                               own: torch.Tensor) -> torch.Tensor:
        """Rating j predicted from column row[j] with its own value `own[j]` taken out of the first layer's
        sum (model.hide_target), decoding only its output, users[j]: one value per rating."""
        kernels = [layer.kernel() for layer in self.layers]
        self._kernels = kernels
        weights = [layer.weight * kernel for layer, kernel in zip(self.layers, kernels)]
        first, last = self.layers[0], self.layers[-1]
        x = torch.sigmoid(torch.addmm(first.bias, columns, weights[0])[row] - own[:, None] * weights[0][users])
        for layer, weight in zip(self.layers[1:-1], weights[1:-1]):
            x = torch.sigmoid(torch.addmm(layer.bias, x, weight))
        return (x * weights[-1].T[users]).sum(1) + last.bias[users]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        distinct, row = torch.unique(items, return_inverse=True)
        dtype = self.layers[0].weight.dtype
        if self.training and self.hide_target:
            own = self.own_ratings(users, items, dtype)
            return self._predict_hidden_target(self.columns(distinct, dtype), row, users, own).float()
        decoded = self._decode(self.columns(distinct, dtype))
        pred = decoded[row, users].float()
        return pred if self.training else pred.clamp(self.rating_min, self.rating_max)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Each movie's last hidden code."""
        return self._decode(self.columns(None, self.layers[0].weight.dtype), codes_only=True)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        kernels = self._kernels or [layer.kernel() for layer in self.layers]
        self._kernels = None
        total = sum(0.5 * self.l2 * layer.weight.pow(2).sum() + 0.5 * self.sparsity * kernel.pow(2).sum()
                    for layer, kernel in zip(self.layers, kernels))
        return total * self.share(users)
