"""Per-user sequences and leave-one-out splits (genrec_jax/data/sequences.py)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from genrec_jax.data.sequences import Examples, choose_cold_items, cold_start_split, group_by_user, make_split

# (user, item, timestamp) in file order. User 2 has a timestamp tie (11 and 12 at t=3) and is
# out of order in the file; user 1's three events all share one timestamp; user 3 has two events,
# user 5 one.
EVENTS = [
    (2, 10, 5),
    (1, 20, 2),
    (2, 11, 3),
    (5, 50, 9),
    (2, 12, 3),
    (3, 30, 8),
    (1, 21, 2),
    (2, 13, 7),
    (3, 31, 4),
    (1, 22, 2),
    (2, 14, 1),
]


def _seqs(events=EVENTS, catalog=None):
  u, i, t = (np.array(c) for c in zip(*events))
  return group_by_user(u, i, t, catalog=catalog)


def _row(ex: Examples, user: int) -> int:
  rows = np.flatnonzero(ex.user_U == user)
  assert len(rows) == 1
  return int(rows[0])


def _check(ex: Examples, user: int, ids, targets, ts, length):
  """One example row against hand-written expectations (everything after them is zero)."""
  r = _row(ex, user)
  n = ex.ids_UxN.shape[1]
  assert ex.length_U[r] == length
  np.testing.assert_array_equal(ex.ids_UxN[r], list(ids) + [0] * (n - len(ids)))
  np.testing.assert_array_equal(ex.targets_UxN[r], list(targets) + [0] * (n - len(targets)))
  np.testing.assert_array_equal(ex.ts_UxN1[r], list(ts) + [0] * (n + 1 - len(ts)))


# ------------------------------------------------------------------------------------------
# group_by_user
# ------------------------------------------------------------------------------------------


def test_group_by_user_stable_sort_and_sorted_users():
  s = _seqs()
  np.testing.assert_array_equal(s.users, [1, 2, 3, 5])
  np.testing.assert_array_equal(s.offsets, [0, 3, 8, 10, 11])
  np.testing.assert_array_equal(s.lengths(), [3, 5, 2, 1])
  assert s.num_users == 4
  # user 1: all at t=2 -> file order; user 2: 14(1), 11(3), 12(3) tie in file order, 10(5), 13(7)
  np.testing.assert_array_equal(s.items, [20, 21, 22, 14, 11, 12, 10, 13, 31, 30, 50])
  np.testing.assert_array_equal(s.timestamps, [2, 2, 2, 1, 3, 3, 5, 7, 4, 8, 9])
  assert s.items.dtype == np.int64 and s.timestamps.dtype == np.int64


def test_group_by_user_ties_keep_file_order_when_reversed():
  """Reversing the file order of tied events reverses them in the sequence."""
  events = [(1, 7, 100), (1, 8, 100), (1, 9, 50), (1, 6, 100)]
  np.testing.assert_array_equal(_seqs(events).items, [9, 7, 8, 6])
  np.testing.assert_array_equal(_seqs(events[::-1]).items, [9, 6, 8, 7])


def test_catalog_default_is_items_seen():
  s = _seqs()
  np.testing.assert_array_equal(s.catalog, sorted({e[1] for e in EVENTS}))
  assert s.num_embeddings == 51


def test_catalog_given_adds_unrated_items_and_sets_table_size():
  catalog = [99, *{e[1] for e in EVENTS}, 40, 40]
  s = _seqs(catalog=catalog)
  np.testing.assert_array_equal(s.catalog, sorted(set(catalog)))
  assert s.num_embeddings == 100


def test_catalog_missing_rated_item_is_an_error():
  catalog = [e[1] for e in EVENTS if e[1] != 31]
  with pytest.raises(ValueError, match="not in the catalog"):
    _seqs(catalog=catalog)


@pytest.mark.parametrize(
    "user,item,ts",
    [([1, 1], [1, 0], [1, 2]), ([1, 1], [1, -3], [1, 2]), ([1, 1], [1, 2], [1])],
)
def test_group_by_user_rejects_bad_input(user, item, ts):
  with pytest.raises(ValueError):
    group_by_user(np.array(user), np.array(item), np.array(ts))


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def test_loo_split_hand_made():
  sp = make_split(_seqs(), "loo", max_seq_len=6)
  assert sp.protocol == "loo"
  for ex in (sp.train, sp.val, sp.test):
    np.testing.assert_array_equal(ex.user_U, [1, 2])  # users 3 and 5 have < 3 events
    assert ex.ids_UxN.shape == (2, 6) and ex.targets_UxN.shape == (2, 6) and ex.ts_UxN1.shape == (2, 7)
    assert ex.ids_UxN.dtype == np.int32 and ex.targets_UxN.dtype == np.int32
    assert ex.ts_UxN1.dtype == np.int64 and ex.length_U.dtype == np.int32
  # user 2: 14(1) 11(3) 12(3) 10(5) 13(7)
  _check(sp.train, 2, ids=[14, 11], targets=[11, 12], ts=[1, 3, 3], length=2)
  _check(sp.val, 2, ids=[14, 11, 12], targets=[0, 0, 10], ts=[1, 3, 3, 5], length=3)
  _check(sp.test, 2, ids=[14, 11, 12, 10], targets=[0, 0, 0, 13], ts=[1, 3, 3, 5, 7], length=4)
  # user 1: 20 21 22, all at t=2: training has one event, i.e. no (history, target) pair
  _check(sp.train, 1, ids=[], targets=[], ts=[2], length=0)
  _check(sp.val, 1, ids=[20], targets=[21], ts=[2, 2], length=1)
  _check(sp.test, 1, ids=[20, 21], targets=[0, 22], ts=[2, 2, 2], length=2)


def test_paper_split_hand_made():
  sp = make_split(_seqs(), "paper", max_seq_len=6)
  assert sp.protocol == "paper" and sp.val is None
  np.testing.assert_array_equal(sp.train.user_U, [1, 2, 3])  # user 5 has a single event
  np.testing.assert_array_equal(sp.test.user_U, [1, 2, 3])
  _check(sp.train, 2, ids=[14, 11, 12], targets=[11, 12, 10], ts=[1, 3, 3, 5], length=3)
  _check(sp.test, 2, ids=[14, 11, 12, 10], targets=[0, 0, 0, 13], ts=[1, 3, 3, 5, 7], length=4)
  _check(sp.train, 3, ids=[], targets=[], ts=[4], length=0)
  _check(sp.test, 3, ids=[31], targets=[30], ts=[4, 8], length=1)


def test_unknown_protocol():
  with pytest.raises(ValueError, match="protocol"):
    make_split(_seqs(), "random", max_seq_len=6)


def test_truncation_keeps_last_max_seq_len():
  # one user with 9 events: items 101..109 at t = 10, 20, ..., 90
  events = [(7, 100 + k, 10 * k) for k in range(1, 10)]
  sp = make_split(_seqs(events), "loo", max_seq_len=3)
  # train: events[:7] = 101..107 -> keep the last N + 1 = 4: 104..107
  _check(sp.train, 7, ids=[104, 105, 106], targets=[105, 106, 107], ts=[40, 50, 60, 70], length=3)
  # val target 108, history the last 3 before it
  _check(sp.val, 7, ids=[105, 106, 107], targets=[0, 0, 108], ts=[50, 60, 70, 80], length=3)
  _check(sp.test, 7, ids=[106, 107, 108], targets=[0, 0, 109], ts=[60, 70, 80, 90], length=3)
  sp = make_split(_seqs(events), "paper", max_seq_len=3)
  _check(sp.train, 7, ids=[105, 106, 107], targets=[106, 107, 108], ts=[50, 60, 70, 80], length=3)
  _check(sp.test, 7, ids=[106, 107, 108], targets=[0, 0, 109], ts=[60, 70, 80, 90], length=3)


def test_history_filter_all_carries_every_past_item():
  events = [(7, 100 + k, 10 * k) for k in range(1, 10)] + [(8, 201, 1), (8, 202, 2), (8, 203, 3)]
  window = make_split(_seqs(events), "loo", max_seq_len=3)
  assert window.val.past_UxH is None and window.test.past_UxH is None
  sp = make_split(_seqs(events), "loo", max_seq_len=3, history_filter="all")
  assert sp.train.past_UxH is None
  # user 7: val target 108 -> past 101..107 (the model still sees only 105..107)
  np.testing.assert_array_equal(sp.val.past_UxH[0], [101, 102, 103, 104, 105, 106, 107])
  np.testing.assert_array_equal(sp.test.past_UxH[0], [101, 102, 103, 104, 105, 106, 107, 108])
  np.testing.assert_array_equal(sp.test.past_UxH[1], [201, 202, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(sp.test.ids_UxN, window.test.ids_UxN)
  assert set(sp.test.take(np.array([1]))) == {"ids", "ts", "targets", "length", "past"}
  with pytest.raises(ValueError, match="history_filter"):
    make_split(_seqs(events), "loo", max_seq_len=3, history_filter="some")


def test_train_windows_all_makes_every_training_event_a_target_once():
  # user 7: 9 events (train on 101..107), user 8: 3 events (train on 201 only: no target)
  events = [(7, 100 + k, 10 * k) for k in range(1, 10)] + [(8, 201, 1), (8, 202, 2), (8, 203, 3)]
  sp = make_split(_seqs(events), "loo", max_seq_len=3, train_windows="all")
  # windows of at most N + 1 = 4 events, newest first, overlapping by one: 104..107, 101..104
  assert len(sp.train) == 2 and list(sp.train.user_U) == [7, 7]
  np.testing.assert_array_equal(sp.train.ids_UxN, [[104, 105, 106], [101, 102, 103]])
  np.testing.assert_array_equal(sp.train.targets_UxN, [[105, 106, 107], [102, 103, 104]])
  np.testing.assert_array_equal(sp.train.ts_UxN1, [[40, 50, 60, 70], [10, 20, 30, 40]])
  last = make_split(_seqs(events), "loo", max_seq_len=3)
  np.testing.assert_array_equal(sp.test.ids_UxN, last.test.ids_UxN)  # evaluation unchanged
  np.testing.assert_array_equal(sp.train.ids_UxN[:1], last.train.ids_UxN[:1])
  # random lengths: the windows' targets are exactly each user's training events 1..end-1
  rng = np.random.default_rng(0)
  events = [(u, int(i), t) for u in range(1, 40) for t, i in enumerate(rng.integers(1, 50, rng.integers(3, 30)))]
  seqs = _seqs(events)
  for n in (1, 4, 7):
    sp = make_split(seqs, "loo", max_seq_len=n, train_windows="all")
    assert sp.train.length_U.max() <= n and sp.train.length_U.min() >= 1
    got = collections.Counter()
    for r in range(len(sp.train)):
      for t in sp.train.targets_UxN[r][sp.train.targets_UxN[r] > 0]:
        got[(int(sp.train.user_U[r]), int(t))] += 1
    want = collections.Counter()
    for u, start, stop in zip(seqs.users, seqs.offsets[:-1], seqs.offsets[1:]):
      for t in seqs.items[start + 1 : stop - 2]:  # every training event but the first
        want[(int(u), int(t))] += 1
    assert got == want
  with pytest.raises(ValueError, match="train_windows"):
    make_split(seqs, "loo", max_seq_len=3, train_windows="every")


def test_train_stride_gives_every_target_once_with_at_least_n_plus_1_minus_s_of_context():
  # Naive reference: each training event j >= 1 of a user is predicted exactly once, from a
  # history that is events[j - h : j] with h >= min(j, N + 1 - S). Item ids are unique per user
  # (1000 u + position), so a target names its event.
  rng = np.random.default_rng(1)
  events = [(u, 1000 * u + t, t) for u in range(1, 30) for t in range(int(rng.integers(3, 40)))]
  seqs = _seqs(events)
  for n, s in ((5, 1), (5, 2), (5, 5), (8, 3)):
    ex = make_split(seqs, "loo", max_seq_len=n, train_windows="all", train_stride=s).train
    seen = collections.Counter()
    for r in range(len(ex)):
      (pos,) = np.nonzero(ex.targets_UxN[r])
      assert 1 <= len(pos) <= s and np.all(np.diff(pos) == 1) and pos[-1] == ex.length_U[r] - 1
      for p in pos:
        target = int(ex.targets_UxN[r, p])
        u, j = divmod(target, 1000)
        hist = ex.ids_UxN[r, : p + 1]
        np.testing.assert_array_equal(hist, 1000 * u + np.arange(j - len(hist), j))
        assert len(hist) >= min(j, n + 1 - s)
        seen[(u, j)] += 1
    want = {(int(u), j) for u, x in zip(seqs.users, seqs.lengths()) for j in range(1, int(x) - 2)}
    assert set(seen) == want and set(seen.values()) == {1}
    if s == 1:  # RecBole's prefix examples: one target per row, at the end, its full history
      np.testing.assert_array_equal(ex.length_U, np.concatenate(
          [np.minimum(np.arange(int(x) - 3, 0, -1), n) for x in seqs.lengths()]))
    if s == n:  # stride N = train_windows='all' without a stride
      plain = make_split(seqs, "loo", max_seq_len=n, train_windows="all").train
      np.testing.assert_array_equal(ex.targets_UxN, plain.targets_UxN)
  with pytest.raises(ValueError, match="stride"):
    make_split(seqs, "loo", max_seq_len=3, train_windows="all", train_stride=4)
  with pytest.raises(ValueError, match="train_windows='all'"):
    make_split(seqs, "loo", max_seq_len=3, train_stride=2)


def test_cold_start_split_hand_made():
  # user 7: items 101..108 at t = 10..80; user 8: 201, 202, 203; user 9: 301, 302, 303.
  events = [(7, 100 + k, 10 * k) for k in range(1, 9)] + [(8, 201, 1), (8, 202, 2), (8, 203, 3)]
  events += [(9, 301, 1), (9, 302, 2), (9, 303, 3)]
  seqs = _seqs(events)
  cs = cold_start_split(seqs, max_seq_len=4, cold_items=np.array([108, 103, 301]))
  np.testing.assert_array_equal(cs.warm_catalog, np.setdiff1d(seqs.catalog, [103, 108, 301]))
  sp = cs.split
  # user 9 lost its only warm history item before the val target (301 is cold): left out
  np.testing.assert_array_equal(sp.test.user_U, [7, 8])
  # user 7: train on 101..106 without 103; val target 107; test target 108 (cold)
  _check(sp.train, 7, ids=[101, 102, 104, 105], targets=[102, 104, 105, 106], ts=[10, 20, 40, 50, 60], length=4)
  _check(sp.val, 7, ids=[102, 104, 105, 106], targets=[0, 0, 0, 107], ts=[20, 40, 50, 60, 70], length=4)
  _check(sp.test, 7, ids=[104, 105, 106, 107], targets=[0, 0, 0, 108], ts=[40, 50, 60, 70, 80], length=4)
  _check(sp.test, 8, ids=[201, 202], targets=[0, 203], ts=[1, 2, 3], length=2)
  # no cold item anywhere in training or in a history
  for ex in (sp.train, sp.val, sp.test):
    assert not np.isin(ex.ids_UxN, cs.cold_items).any()
  assert not np.isin(sp.train.targets_UxN, cs.cold_items).any()
  np.testing.assert_array_equal(cs.test_cold_rows, [_row(sp.test, 7)])
  np.testing.assert_array_equal(cs.test_warm_rows, [_row(sp.test, 8)])
  sub = sp.test.subset(cs.test_cold_rows)
  np.testing.assert_array_equal(sub.user_U, [7])


def test_choose_cold_items_is_seeded_and_sized():
  catalog = np.arange(1, 51)
  a, b, c = (choose_cold_items(catalog, 0.1, seed=s) for s in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert len(a) == 5 and np.isin(a, catalog).all() and not np.array_equal(a, c)
  assert np.all(np.diff(a) > 0)
  with pytest.raises(ValueError, match="cold_frac"):
    choose_cold_items(catalog, 1.5, seed=3)


def test_examples_take():
  sp = make_split(_seqs(), "loo", max_seq_len=6)
  got = sp.test.take(np.array([1, 0]))
  assert set(got) == {"ids", "ts", "targets", "length"}
  np.testing.assert_array_equal(got["length"], [4, 2])
  np.testing.assert_array_equal(got["ids"][1], sp.test.ids_UxN[0])


# ------------------------------------------------------------------------------------------
# Real data: ML-100K, checked against a plain per-user sort of u.data
# ------------------------------------------------------------------------------------------


def _ml100k_sorted_by_user(data_dir):
  """{user: [item, ...]} and {user: [ts, ...]} with Python's stable sort by timestamp."""
  events = collections.defaultdict(list)
  with open(data_dir / "ml-100k" / "u.data") as f:
    for line in f:
      user, item, _, ts = line.split("\t")
      events[int(user)].append((int(item), int(ts)))
  items, stamps = {}, {}
  for user, evs in events.items():
    evs = sorted(evs, key=lambda e: e[1])
    items[user] = [e[0] for e in evs]
    stamps[user] = [e[1] for e in evs]
  return items, stamps


def test_ml100k_splits_match_plain_sort(data_dir, ml100k_task):
  items, stamps = _ml100k_sorted_by_user(data_dir)
  sp = ml100k_task.split
  n = sp.train.ids_UxN.shape[1]
  assert n == 50
  assert len(items) == 943
  for ex in (sp.train, sp.val, sp.test):
    np.testing.assert_array_equal(ex.user_U, sorted(items))
  assert ml100k_task.num_items == 1683
  np.testing.assert_array_equal(ml100k_task.catalog, np.arange(1, 1683))
  for r, user in enumerate(sp.train.user_U):
    seq, ts = items[int(user)], stamps[int(user)]
    # train: events[:-2], last N + 1 of them
    tr, tr_ts = seq[:-2][-(n + 1) :], ts[:-2][-(n + 1) :]
    h = len(tr) - 1
    assert sp.train.length_U[r] == h
    assert list(sp.train.ids_UxN[r, :h]) == tr[:-1]
    assert list(sp.train.targets_UxN[r, :h]) == tr[1:]
    assert list(sp.train.ts_UxN1[r, : h + 1]) == tr_ts
    assert not sp.train.ids_UxN[r, h:].any() and not sp.train.targets_UxN[r, h:].any()
    for ex, end in ((sp.val, len(seq) - 1), (sp.test, len(seq))):
      hist = seq[: end - 1][-n:]
      h = len(hist)
      assert ex.length_U[r] == h
      assert list(ex.ids_UxN[r, :h]) == hist
      assert ex.targets_UxN[r, h - 1] == seq[end - 1]
      assert np.count_nonzero(ex.targets_UxN[r]) == 1
      assert list(ex.ts_UxN1[r, : h + 1]) == ts[: end - 1][-n:] + [ts[end - 1]]
