"""User-item matrices and their protocols (genrec_jax/data/interactions.py) and the score-matrix
metrics of genrec_jax/metrics.py, against naive NumPy."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import metrics
from genrec_jax.data import interactions as it


def _rows(m) -> list[set[int]]:
  return [set(m.indices[m.indptr[r] : m.indptr[r + 1]].tolist()) for r in range(m.shape[0])]


def _synthetic_ratings(num_users=60, num_items=40, seed=0):
  rng = np.random.default_rng(seed)
  user, item, rating = [], [], []
  for u in range(1, num_users + 1):
    n = rng.integers(2, 30)
    for i in rng.choice(np.arange(1, num_items + 1), size=n, replace=False):
      user.append(u), item.append(i), rating.append(rng.integers(1, 6))
  return np.array(user), np.array(item), np.array(rating, np.float32)


def test_binary_csr_collapses_duplicates():
  m = it.binary_csr(np.array([0, 0, 1, 0]), np.array([2, 2, 0, 1]), (2, 3))
  np.testing.assert_array_equal(m.toarray(), [[0, 1, 1], [1, 0, 0]])
  assert m.dtype == np.float32


def test_strong_generalization_split():
  user, item, rating = _synthetic_ratings()
  d = it.strong_generalization(user, item, rating, num_heldout_users=8, seed=1)
  clicks = {}
  for u, i, r in zip(user, item, rating):
    if r > 3.5:
      clicks.setdefault(u, set()).add(i)
  eligible = {u for u, s in clicks.items() if len(s) >= 5}
  train_users = set(d.train_user_U.tolist())
  val_users, test_users = set(d.val.user_U.tolist()), set(d.test.user_U.tolist())
  # users: disjoint groups, all eligible; 2 x 8 held out (minus those left with no target)
  assert not (train_users & val_users) and not (train_users & test_users) and not (val_users & test_users)
  assert train_users | val_users | test_users <= eligible
  assert len(train_users) == len(eligible) - 16
  # columns: exactly the items the training users clicked
  train_items = set().union(*(clicks[u] for u in train_users))
  assert set(d.items_I.tolist()) == train_items
  for u, r in zip(d.train_user_U, _rows(d.train_UxI)):
    assert {d.items_I[j] for j in r} == clicks[u]
  for held in (d.val, d.test):
    assert np.all(held.train_row_U == -1)
    for u, f, t, x in zip(held.user_U, _rows(held.fold_in_UxI), _rows(held.target_UxI), _rows(held.exclude_UxI)):
      items = {i for i in clicks[u] if i in train_items}
      assert not (f & t) and x == f and t  # no leakage, the filter is the fold-in
      assert {d.items_I[j] for j in f | t} == items
      assert len(t) == int(0.2 * len(items))  # the notebook's proportion
  # determinism: same seed -> same split; another seed -> another
  again = it.strong_generalization(user, item, rating, num_heldout_users=8, seed=1)
  assert (again.test.target_UxI != d.test.target_UxI).nnz == 0
  np.testing.assert_array_equal(again.test.user_U, d.test.user_U)
  other = it.strong_generalization(user, item, rating, num_heldout_users=8, seed=2)
  assert not np.array_equal(other.test.user_U, d.test.user_U)


def test_strong_rejects_too_many_heldout_users():
  user, item, rating = _synthetic_ratings()
  with pytest.raises(it.ConfigError, match="held-out users"):
    it.strong_generalization(user, item, rating, num_heldout_users=1000)


def test_random_split_proportions_and_no_leakage():
  user, item, _ = _synthetic_ratings(seed=3)
  d = it.random_split(user, item, test_prop=0.2, seed=5)
  per_user = {}
  for u, i in zip(user, item):
    per_user.setdefault(u, set()).add(i)
  train_rows = _rows(d.train_UxI)
  for r, u in enumerate(d.train_user_U):
    n = len(per_user[u])
    assert len(train_rows[r]) == n - (int(0.2 * n) if n >= 5 else 0)
  for row, f, t in zip(d.test.train_row_U, _rows(d.test.fold_in_UxI), _rows(d.test.target_UxI)):
    assert f == train_rows[row] and not (f & t) and t
    assert {d.items_I[j] for j in f | t} == per_user[d.train_user_U[row]]
  assert d.val is None


def test_loo_matches_the_sequential_split(data_dir):
  from genrec_jax.data import movielens

  d = it.load_loo("ml-100k", str(data_dir))
  r = movielens.load_ratings(str(data_dir), "ml-100k")
  u = 10  # user id 10: check against the raw, time-ordered events
  order = np.lexsort((np.arange(len(r.user))[r.user == u], r.timestamp[r.user == u]))
  events = r.item[r.user == u][order]
  row = int(np.flatnonzero(d.train_user_U == u)[0])
  ids = lambda m: {int(d.items_I[j]) for j in _rows(m[row])[0]}  # noqa: E731
  assert ids(d.train_UxI) == set(events[:-2].tolist())
  assert ids(d.val.target_UxI) == {int(events[-2])} and ids(d.test.target_UxI) == {int(events[-1])}
  assert ids(d.val.fold_in_UxI) == set(events[:-2].tolist()) == ids(d.val.exclude_UxI)
  assert ids(d.test.fold_in_UxI) == set(events[:-1].tolist())
  assert d.train_UxI.shape == (943, 1682) and len(d.test) == 943
  assert d.train_UxI.nnz == 100_000 - 2 * 943


# ------------------------------------------------------------------------------- metrics ----


def _naive_topk(scores, target, exclude, k):
  rec, prec, ndcg = [], [], []
  for s, t, x in zip(scores, target, exclude):
    cand = [j for j in np.argsort(-s, kind="stable") if not x[j]][:k]
    hits = [1.0 if t[j] else 0.0 for j in cand]
    n = int(t.sum())
    rec.append(sum(hits) / min(k, n))
    prec.append(sum(hits) / k)
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    ndcg.append(dcg / sum(1 / math.log2(i + 2) for i in range(min(k, n))))
  return np.array(rec), np.array(prec), np.array(ndcg)


def test_topk_metrics_match_numpy():
  rng = np.random.default_rng(0)
  b, n = 16, 50
  scores = rng.normal(size=(b, n)).astype(np.float32)
  exclude = rng.random((b, n)) < 0.3
  target = (rng.random((b, n)) < 0.15) & ~exclude
  target[np.arange(b), rng.integers(0, n, b)] = True  # at least one target each
  exclude &= ~target
  out = metrics.topk_metrics(jnp.asarray(scores), jnp.asarray(target), jnp.asarray(exclude), (1, 5, 20))
  for k in (1, 5, 20):
    rec, prec, ndcg = _naive_topk(scores, target, exclude, k)
    np.testing.assert_allclose(out[f"recall@{k}"], rec, rtol=1e-5)
    np.testing.assert_allclose(out[f"precision@{k}"], prec, rtol=1e-5)
    np.testing.assert_allclose(out[f"ndcg@{k}"], ndcg, rtol=1e-5)


def test_ranks_from_scores_match_numpy():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(8, 30)).astype(np.float32)
  exclude = rng.random((8, 30)) < 0.3
  target = rng.integers(0, 30, 8)
  exclude[np.arange(8), target] = False
  want = [1 + sum(1 for j in range(30) if not x[j] and s[j] > s[t]) for s, x, t in zip(scores, exclude, target)]
  got = metrics.ranks_from_scores(jnp.asarray(scores), jnp.asarray(target), jnp.asarray(exclude))
  np.testing.assert_array_equal(got, want)


def test_mean_accumulator():
  acc = metrics.MeanAccumulator()
  acc.add({"a": np.array([1.0, 2.0])})
  acc.add({"a": np.array([6.0])})
  assert acc.result() == {"a": 3.0, "num_users": 3}
