"""The article's plain single-process training loop, written as the article writes it: the throughput baseline
that `benchmarks.throughput` runs beside distrib (`--variants` with no name runs it alone).

numpy permutation per epoch, batches of 2000 (last partial batch dropped), LongTensor/FloatTensor made from
numpy each step, MSELoss(reduction='sum'), Adam (lr 1e-3, wd 1e-5), the cosine schedule restarting every 2
epochs stepped per batch, early stopping with patience 10 on validation, fp32, nn.Dropout, `loss.item()`
every step. The data are distrib's prepared ml-100k u1 arrays (train/val/test), so RMSEs are comparable.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn


class ArticleEmbeddingNet(nn.Module):
    def __init__(self, n_users, n_movies, n_factors=150, embedding_dropout=0.05, hidden=(500, 500, 500),
                 dropouts=(0.5, 0.5, 0.25)):
        super().__init__()
        self.u = nn.Embedding(n_users, n_factors)
        self.m = nn.Embedding(n_movies, n_factors)
        self.drop = nn.Dropout(embedding_dropout)
        layers, width = [], 2 * n_factors
        for size, rate in zip(hidden, dropouts):
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(rate)]
            width = size
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 1)
        self.u.weight.data.uniform_(-0.05, 0.05)
        self.m.weight.data.uniform_(-0.05, 0.05)
        for layer in list(self.hidden) + [self.fc]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                layer.bias.data.fill_(0.01)

    def forward(self, users, movies, minmax):
        x = self.drop(torch.cat([self.u(users), self.m(movies)], dim=1))
        out = torch.sigmoid(self.fc(self.hidden(x)))
        min_rating, max_rating = minmax
        return out * (max_rating - min_rating + 1) + min_rating - 0.5


def cosine(t_max, eta_min=0):
    def scheduler(epoch, base_lr):
        t = epoch % t_max
        return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2
    return scheduler


class CyclicLR(torch.optim.lr_scheduler._LRScheduler):
    def __init__(self, optimizer, schedule, last_epoch=-1):
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self.schedule(self.last_epoch, lr) for lr in self.base_lrs]


def batches(x, y, bs, shuffle):
    if shuffle:
        index = np.random.permutation(x.shape[0])
        x, y = x[index], y[index]
    for k in range(x.shape[0] // bs):  # the article's iterator drops the last partial batch
        yield torch.LongTensor(x[k * bs:(k + 1) * bs]), torch.FloatTensor(y[k * bs:(k + 1) * bs]).view(-1, 1)


def evaluate_rmse(net, x, y, minmax, bs=2000) -> float:
    """Over every row (the article's val loop drops a partial batch; here the RMSE must be exact)."""
    net.eval()
    with torch.no_grad():
        sq = 0.0
        for k in range(0, x.shape[0], bs):
            xb, yb = torch.LongTensor(x[k:k + bs]), torch.FloatTensor(y[k:k + bs]).view(-1, 1)
            sq += float(((net(xb[:, 0], xb[:, 1], minmax) - yb) ** 2).sum())
    return math.sqrt(sq / x.shape[0])


def train_article(data, epochs: int = 100, patience: int = 10, bs: int = 2000, lr: float = 1e-3, wd: float = 1e-5,
                  seed: int = 0, log=print, target_rmse: float = 0.0) -> dict:
    """Returns samples/s over the training phases, wall times, and the test RMSE of the best-val weights."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    clock = time.perf_counter()
    paused = 0.0

    def split(s):
        return np.stack([np.asarray(s.users), np.asarray(s.items)], axis=1), np.asarray(s.ratings, dtype=np.float32)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(data.train), split(data.val), split(data.test)
    minmax = (data.rating_min, data.rating_max)
    net = ArticleEmbeddingNet(data.n_users, data.n_items)
    criterion = nn.MSELoss(reduction="sum")
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    iterations_per_epoch = x_train.shape[0] // bs
    scheduler = CyclicLR(optimizer, cosine(t_max=iterations_per_epoch * 2, eta_min=lr / 10))
    best_loss, best_weights, no_improvements = np.inf, None, 0
    train_s, samples, best_epoch, reached_s, epochs_run = 0.0, 0, 0, None, 0
    for epoch in range(epochs):
        net.train()
        started, running = time.perf_counter(), 0.0
        for xb, yb in batches(x_train, y_train, bs, shuffle=True):
            optimizer.zero_grad()
            loss = criterion(net(xb[:, 0], xb[:, 1], minmax), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
            samples += xb.shape[0]
        train_s += time.perf_counter() - started
        val_rmse = evaluate_rmse(net, x_val, y_val, minmax)
        epochs_run = epoch + 1
        at = time.perf_counter() - clock - paused
        if target_rmse:  # for time-to-quality only, on a paused clock
            pause = time.perf_counter()
            if reached_s is None and evaluate_rmse(net, x_test, y_test, minmax) <= target_rmse:
                reached_s = at
            paused += time.perf_counter() - pause
        log(f"  article epoch {epoch + 1:3d}: train {running / (iterations_per_epoch * bs):.4f} "
            f"val_rmse {val_rmse:.4f}  {time.perf_counter() - started:.2f}s")
        if val_rmse ** 2 < best_loss:
            best_loss, best_weights, no_improvements, best_epoch = val_rmse ** 2, copy.deepcopy(net.state_dict()), 0, epoch + 1
            best_at = at
        else:
            no_improvements += 1
            if no_improvements >= patience:
                break
    total_s = time.perf_counter() - clock - paused
    net.load_state_dict(best_weights)
    return {"samples_per_s": samples / train_s, "total_s": total_s, "best_epoch": best_epoch, "best_at_s": best_at,
            "epochs": epochs_run, "val_rmse": math.sqrt(best_loss), "reached_s": reached_s,
            "test_rmse": evaluate_rmse(net, x_test, y_test, minmax)}

