"""The models `model.name` selects, built by name from one registry.

    model = build_model(cfg.model, n_users, n_items, rating_min, rating_max)

embeddingnet (the article's, the default), mf (biased matrix factorisation), bias (the baseline: global
mean + user and movie biases), autorec (I-AutoRec), uautorec
(U-AutoRec), kernelnet (Sparse FC, GLocal-K's local part) and ensemble (members trained side by side,
predictions blended). Every model is a `RatingModel`: the trainer asks it what it needs
(`needs_train_ratings`, `owns_penalty`, `embedding_tables()`), never its class.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from distrib.config import ModelConfig
from distrib.models.autorec import IAutoRec, UAutoRec
from distrib.models.base import RatingModel
from distrib.models.bias import BiasBaseline
from distrib.models.embeddingnet import EmbeddingNet
from distrib.models.ensemble import Ensemble
from distrib.models.kernelnet import KernelNet
from distrib.models.mf import BiasedMF
from distrib.models.penalty import build_penalty


def _embeddingnet(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    return EmbeddingNet(
        n_users=n_users, n_items=n_items, n_factors=cfg.n_factors, hidden=list(cfg.hidden),
        dropouts=list(cfg.dropouts), embedding_dropout=cfg.embedding_dropout,
        rating_min=rating_min, rating_max=rating_max, bias=cfg.bias, implicit=cfg.implicit,
        dot=cfg.dot,
    )


def _mf(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    return BiasedMF(n_users, n_items, cfg.n_factors, rating_min, rating_max)


def _bias(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    return BiasBaseline(n_users, n_items, rating_min, rating_max)


def _autorec(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    return IAutoRec(n_users, n_items, cfg.autorec.hidden, cfg.autorec.l2, rating_min, rating_max, cfg.hide_target)


def _uautorec(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    return UAutoRec(n_users, n_items, cfg.uautorec.hidden, cfg.uautorec.l2, rating_min, rating_max,
                    cfg.hide_target)


def _kernelnet(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    k = cfg.kernelnet
    return KernelNet(n_users, n_items, k.hidden, k.layers, k.kernel_dim, k.l2, k.sparsity, rating_min, rating_max,
                     cfg.hide_target)


def _ensemble(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    member_cfgs = [replace(cfg, name=name, members=[]) for name in cfg.members]
    members = [build_model(member, n_users, n_items, rating_min, rating_max) for member in member_cfgs]
    penalties = [build_penalty(member_cfg, member) for member_cfg, member in zip(member_cfgs, members)]
    return Ensemble(members, penalties, cfg.member_weights, rating_min, rating_max)


MODELS: dict[str, Callable[..., RatingModel]] = {
    "embeddingnet": _embeddingnet, "mf": _mf, "bias": _bias, "autorec": _autorec, "uautorec": _uautorec,
    "kernelnet": _kernelnet, "ensemble": _ensemble,
}


def build_model(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> RatingModel:
    """The model `cfg.name` names, sized for the data."""
    return MODELS[cfg.name](cfg, n_users, n_items, rating_min, rating_max)


__all__ = ["MODELS", "BiasBaseline", "BiasedMF", "EmbeddingNet", "Ensemble", "IAutoRec", "KernelNet", "RatingModel", "UAutoRec",
           "build_model", "build_penalty"]
