"""Top-K ranking metrics, HR@K and NDCG@K, for a rating model scored against every movie.

Definition (leave-one-out style, as in NCF, but against all unrated movies instead of 100 sampled ones):
- A *relevant* pair is a held-out rating (user u, movie i) in the evaluated split with rating >= 4 (the
  threshold is a parameter; on a 0.5-5 scale too).
- Its *competitors* are the movies u has no known rating for in any split (train, val or test): other
  held-out movies of u are neither competitors nor hurt the pair, as in leave-one-out.
- rank(u, i) = 1 + #{competitors j : score(u, j) >= score(u, i)}. Ties count against the pair, so a
  model that predicts one constant for everything ranks every pair last, not first.
- hit = rank <= K;  ndcg = 1 / log2(rank + 1) if hit else 0 (one relevant item per list, so ideal DCG = 1).
- HR@K and NDCG@K average over a user's relevant pairs, then over users, so heavy raters do not dominate.
"""
from __future__ import annotations

import numpy as np

TOP_K = 10
RELEVANT_RATING = 4.0
PAIR_CHUNK = 1024  # one user's pairs compared against all movies at once: PAIR_CHUNK * n_items booleans


class KnownItems:
    """Every (user, item) with a known rating, grouped by user (CSR), to mask rated movies in bulk."""

    def __init__(self, n_users: int, n_items: int, *splits):
        users = np.concatenate([np.asarray(s.users, dtype=np.int64) for s in splits if s is not None])
        items = np.concatenate([np.asarray(s.items, dtype=np.int64) for s in splits if s is not None])
        order = np.argsort(users, kind="stable")
        self.items = items[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
        self.n_items = n_items

    def of(self, user: int) -> np.ndarray:
        return np.unique(self.items[self.indptr[user]:self.indptr[user + 1]])

    def mask(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) booleans: True where the user has a known rating."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(users.size), lengths)
        # position of each entry in the concatenation of the users' CSR ranges [start, end)
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        flat = np.arange(lengths.sum()) + shift
        known = np.zeros((users.size, self.n_items), dtype=bool)
        known[rows, self.items[flat]] = True
        return known


def target_ranks(scores: np.ndarray, known: np.ndarray, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """rank of each (row, target) pair among the row's unknown items: 1 + #{j unknown: s_j >= s_target}.

    scores, known: (n_rows, n_items); rows, targets: (n_pairs,) indices into them.
    """
    rows, targets = np.asarray(rows, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    ranks = np.empty(rows.size, dtype=np.int64)
    by_row = np.argsort(rows, kind="stable")
    for pairs in np.split(by_row, np.flatnonzero(np.diff(rows[by_row])) + 1):
        if pairs.size == 0:
            continue
        row = rows[pairs[0]]
        # the row's known movies scored -inf once, then each of its pairs is one comparison pass and a count
        competitors = np.where(known[row], -np.inf, scores[row])
        for start in range(0, pairs.size, PAIR_CHUNK):
            chunk = pairs[start:start + PAIR_CHUNK]
            target_scores = scores[row, targets[chunk]]
            ranks[chunk] = 1 + np.count_nonzero(competitors >= target_scores[:, None], axis=1)
    return ranks


def hit_and_ndcg(ranks: np.ndarray, pair_users: np.ndarray, k: int = TOP_K) -> tuple[float, float, int]:
    """(HR@k, NDCG@k, number of users): per-user means over their pairs, then the mean over users."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return float("nan"), float("nan"), 0
    hit = ranks <= k
    gain = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    _, user_of_pair = np.unique(np.asarray(pair_users), return_inverse=True)
    n_pairs = np.bincount(user_of_pair)
    hr = np.bincount(user_of_pair, weights=hit.astype(float)) / n_pairs
    ndcg = np.bincount(user_of_pair, weights=gain) / n_pairs
    return float(hr.mean()), float(ndcg.mean()), int(n_pairs.size)


def ranking_metrics(score_users, split, known: KnownItems, k: int = TOP_K,
                    relevant_rating: float = RELEVANT_RATING, users: np.ndarray | None = None,
                    users_per_batch: int = 256) -> dict:
    """HR@k and NDCG@k over the split's relevant pairs.

    `score_users(user_indices) -> (len, n_items) scores` scores every movie for a batch of users (the
    model's predicted ratings); `users`, when given, restricts the evaluation to those users.
    """
    relevant = np.asarray(split.ratings) >= relevant_rating
    pair_users = np.asarray(split.users, dtype=np.int64)[relevant]
    pair_items = np.asarray(split.items, dtype=np.int64)[relevant]
    if users is not None:
        keep = np.isin(pair_users, users)
        pair_users, pair_items = pair_users[keep], pair_items[keep]
    order = np.argsort(pair_users, kind="stable")
    pair_users, pair_items = pair_users[order], pair_items[order]
    batch_users = np.unique(pair_users)
    ranks = np.empty(pair_users.size, dtype=np.int64)
    for start in range(0, batch_users.size, users_per_batch):
        chunk = batch_users[start:start + users_per_batch]
        lo = np.searchsorted(pair_users, chunk[0], side="left")
        hi = np.searchsorted(pair_users, chunk[-1], side="right")
        rows = np.searchsorted(chunk, pair_users[lo:hi])
        scores = np.asarray(score_users(chunk))
        ranks[lo:hi] = target_ranks(scores, known.mask(chunk), rows, pair_items[lo:hi])
    hr, ndcg, n_users = hit_and_ndcg(ranks, pair_users, k)
    return {f"hr@{k}": hr, f"ndcg@{k}": ndcg, "ranking_users": n_users, "ranking_pairs": int(ranks.size)}
