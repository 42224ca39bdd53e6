"""Full-ranking metrics (genrec_jax/metrics.py) on hand-made scores and ranks."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import metrics

METRIC_KEYS = {"hr@1", "hr@5", "hr@10", "hr@50", "hr@200", "ndcg@5", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"}


def _ranks(scores_BxV, targets, history, candidates):
  """target_ranks with user = e_0 and table[:, 0] = scores, so user·item = the given score."""
  scores = np.asarray(scores_BxV, np.float32)
  b, v = scores.shape
  # one 'dimension' per user: user b is e_b, item i has score[b, i] in coordinate b
  user = np.eye(b, dtype=np.float32)
  table = scores.T.copy()
  return np.asarray(
      metrics.target_ranks(
          jnp.asarray(user), jnp.asarray(targets, jnp.int32), jnp.asarray(history, jnp.int32),
          jnp.asarray(table), jnp.asarray(candidates),
      )
  )


#            item:  0    1    2    3    4    5    6
SCORES = np.array([
    [9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.8],
    [9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.8],
    [9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.8],
    [9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.8],
])
CANDIDATES = np.array([False, True, True, True, True, True, False])  # 0 = padding, 6 not rankable


def test_target_ranks_hand_made():
  targets = [3, 3, 5, 1]
  history = [
      [0, 0],  # nothing excluded: only item 2 (0.9) is higher; item 4 ties; 0 and 6 are not candidates
      [2, 0],  # item 2 is in the history: nothing higher
      [0, 0],  # 1, 2, 3, 4 are higher than 0.1
      [3, 4],  # 2 is higher than 0.5; 3 and 4 excluded
  ]
  np.testing.assert_array_equal(_ranks(SCORES, targets, history, CANDIDATES), [2, 1, 5, 2])


def test_target_ranks_ties_do_not_count_as_higher():
  scores = np.full((1, 6), 0.3)
  assert _ranks(scores, [2], [[0]], np.ones(6, bool)).tolist() == [1]


def test_target_ranks_every_item_a_candidate():
  """With every item a candidate, item 6 counts; item 0 only where no history padding hides it."""
  ranks = _ranks(SCORES, [3, 3, 5, 1], [[0, 0], [2, 0], [0, 0], [3, 4]], np.ones(7, bool))
  np.testing.assert_array_equal(ranks, [3, 2, 6, 4])


def test_target_ranks_random_against_numpy_loop():
  rng = np.random.default_rng(0)
  b, v, n = 6, 30, 5
  scores = rng.normal(size=(b, v)).round(1)  # rounding creates ties
  cand = rng.random(v) < 0.8
  cand[0] = False
  history = rng.integers(0, v, (b, n))
  targets = rng.integers(1, v, b)
  got = _ranks(scores, targets, history, cand)
  for i in range(b):
    higher = sum(
        1 for j in range(v) if cand[j] and j not in set(history[i]) and scores[i, j] > scores[i, targets[i]]
    )
    assert got[i] == higher + 1


def test_metrics_from_ranks_hand_computed():
  ranks = [1, 2, 10, 11, 200, 201]
  got = metrics.metrics_from_ranks(np.array(ranks))
  assert set(got) == METRIC_KEYS
  want = {
      "hr@1": 1 / 6,
      "hr@5": 2 / 6,
      "ndcg@5": (1 + 1 / math.log2(3)) / 6,
      "hr@10": 3 / 6,
      "hr@50": 4 / 6,
      "hr@200": 5 / 6,
      "ndcg@10": (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6,
      "ndcg@50": (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12)) / 6,
      "ndcg@200": (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(201)) / 6,
      "mrr": (1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 200 + 1 / 201) / 6,
  }
  for k, v in want.items():
    assert got[k] == pytest.approx(v, rel=1e-12), k


def test_metrics_from_ranks_empty():
  got = metrics.metrics_from_ranks(np.array([], np.int32))
  assert got == {k: 0.0 for k in METRIC_KEYS}


def test_ranking_accumulator_streaming_equals_one_shot():
  rng = np.random.default_rng(1)
  ranks = rng.integers(1, 400, 101)
  acc = metrics.RankingAccumulator()
  for part in np.split(ranks, [3, 3, 40, 41, 90]):  # uneven batches, one empty
    acc.add(part)
  got = acc.result()
  want = metrics.metrics_from_ranks(ranks)
  assert got["num_users"] == 101
  assert set(got) == METRIC_KEYS | {"num_users"}
  for k in METRIC_KEYS:
    assert got[k] == pytest.approx(want[k], rel=1e-12), k


def test_ranking_accumulator_empty():
  assert metrics.RankingAccumulator().result() == {"num_users": 0}
