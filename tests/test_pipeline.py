"""Model batches, packing and the training iterator (genrec_jax/data/pipeline.py)."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples
from genrec_jax.models.sequential import build_model

MODEL_KEYS = {"ids", "targets", "ts_key", "ts_query", "pos", "seg"}


def _synthetic_examples(num_users: int, n: int, seed: int, min_len: int = 1) -> Examples:
  """Users whose first history item is the marker u + 1000, so a batch reveals who is in it."""
  rng = np.random.default_rng(seed)
  length = rng.integers(min_len, n + 1, num_users).astype(np.int32)
  ids = np.zeros((num_users, n), np.int32)
  targets = np.zeros((num_users, n), np.int32)
  ts = np.zeros((num_users, n + 1), np.int64)
  for u, ln in enumerate(length):
    ids[u, :ln] = rng.integers(1, 999, ln)
    if ln:
      ids[u, 0] = 1000 + u
    targets[u, :ln] = rng.integers(1, 999, ln)
    ts[u, : ln + 1] = np.sort(rng.integers(10**8, 10**9, ln + 1))
  return Examples(ids, ts, targets, length, np.arange(num_users, dtype=np.int64))


def _segments(batch):
  """[(row, start, length)] of every sequence in a model batch."""
  out = []
  for r in range(batch["seg"].shape[0]):
    seg = batch["seg"][r]
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      assert len(where) and np.all(np.diff(where) == 1), "segments are contiguous"
      out.append((r, int(where[0]), len(where)))
  return out


def _users_in(batch):
  return [int(batch["ids"][r, start]) - 1000 for r, start, _ in _segments(batch)]


# ------------------------------------------------------------------------------------------
# padded_to_model, pack_rows, pack
# ------------------------------------------------------------------------------------------


def test_padded_to_model_layout():
  ex = _synthetic_examples(4, 6, seed=0)
  batch = ex.take(np.arange(4))
  m = pipeline.padded_to_model(batch)
  assert set(m) == MODEL_KEYS | {"length"}
  for u in range(4):
    ln = ex.length_U[u]
    np.testing.assert_array_equal(m["seg"][u], [1] * ln + [0] * (6 - ln))
    np.testing.assert_array_equal(m["pos"][u], list(range(ln)) + [0] * (6 - ln))
    np.testing.assert_array_equal(m["ts_key"][u, :ln], ex.ts_UxN1[u, :ln])
    np.testing.assert_array_equal(m["ts_query"][u, :ln], ex.ts_UxN1[u, 1 : ln + 1])
    assert not m["ts_key"][u, ln:].any() and not m["ts_query"][u, ln:].any()
    np.testing.assert_array_equal(m["ids"][u], ex.ids_UxN[u])
    np.testing.assert_array_equal(m["targets"][u], ex.targets_UxN[u])


def test_pack_rows_first_fit_decreasing():
  assert pipeline.pack_rows(np.array([5, 3, 4, 2, 0, 1]), 6) == [[0, 5], [2, 3], [1]]
  assert pipeline.pack_rows(np.array([0, 0]), 6) == []
  assert pipeline.pack_rows(np.array([6, 6, 6]), 6) == [[0], [1], [2]]


def test_pack_rows_invariants_on_random_lengths():
  rng = np.random.default_rng(1)
  for _ in range(20):
    lengths = rng.integers(0, 51, rng.integers(1, 200))
    rows = pipeline.pack_rows(lengths, 50)
    members = [i for row in rows for i in row]
    assert sorted(members) == list(np.flatnonzero(lengths > 0))  # each non-empty once
    assert all(sum(lengths[i] for i in row) <= 50 for row in rows)
    # first-fit decreasing uses at most 11/9 OPT + 1 rows, and OPT >= total / capacity
    lower = -(-int(lengths.sum()) // 50)
    assert len(rows) <= 11 * lower / 9 + 1


def test_pack_places_each_user_exactly_once_with_its_tokens():
  ex = _synthetic_examples(37, 10, seed=2)
  ex = Examples(ex.ids_UxN, ex.ts_UxN1, ex.targets_UxN, np.where(np.arange(37) % 9 == 0, 0, ex.length_U).astype(np.int32), ex.user_U)
  batch = ex.take(np.arange(37))
  m = pipeline.padded_to_model(batch)
  packed = pipeline.pack(batch)
  assert set(packed) == MODEL_KEYS
  rows = packed["ids"].shape[0]
  assert rows % 8 == 0 and packed["ids"].shape[1] == 10
  segs = _segments(packed)
  users = _users_in(packed)
  assert sorted(users) == [u for u in range(37) if ex.length_U[u] > 0]
  for (r, start, ln), u in zip(segs, users):
    assert ln == ex.length_U[u]
    for k in ("ids", "targets", "ts_key", "ts_query"):
      np.testing.assert_array_equal(packed[k][r, start : start + ln], m[k][u, :ln], err_msg=k)
    np.testing.assert_array_equal(packed["pos"][r, start : start + ln], np.arange(ln))
  padding = packed["seg"] == 0
  for k in MODEL_KEYS:
    assert not packed[k][padding].any(), k
  # fewer rows than users: the point of packing
  assert len({r for r, _, _ in segs}) < np.count_nonzero(ex.length_U)


def test_pack_empty_batch_gives_row_multiple_of_empty_rows():
  ex = _synthetic_examples(3, 5, seed=3)
  batch = ex.take(np.arange(3))
  batch["length"][:] = 0
  packed = pipeline.pack(batch)
  assert packed["ids"].shape == (8, 5)
  assert not any(packed[k].any() for k in MODEL_KEYS)


# ------------------------------------------------------------------------------------------
# Packed and padded batches give the same model outputs (real ML-100K sequences)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["hstu", "sasrec"])
def test_packed_and_padded_outputs_identical_ml100k(ml100k_task, ml100k_config, model_name):
  cfg = ml100k_config(**{"model.name": model_name, "model.num_blocks": 2, "model.num_heads": 2,
                         "model.dqk": 16, "model.dv": 16})
  model = build_model(cfg, ml100k_task.num_items)
  n = cfg.data.max_seq_len
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, deterministic=True))
  for split_name, rows in (("train", np.arange(0, 943, 7)), ("val", np.arange(3, 943, 7))):
    ex = getattr(ml100k_task.split, split_name)
    batch = ex.take(rows)
    padded = pipeline.padded_to_model(batch)
    packed = pipeline.pack(batch)
    rows_used = pipeline.pack_rows(batch["length"], n)
    # capacity, multiple of 8, every user exactly once
    assert packed["ids"].shape[0] % 8 == 0
    assert all(sum(batch["length"][i] for i in row) <= n for row in rows_used)
    assert sorted(i for row in rows_used for i in row) == list(np.flatnonzero(batch["length"] > 0))
    assert len(rows_used) < len(rows)  # some rows really are shared
    params = model.init({"params": jax.random.key(0)}, {k: jnp.asarray(padded[k][:1]) for k in MODEL_KEYS})["params"]
    # larger weights than the init, so attention (and any leak across segments) matters
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), params)
    out_padded = np.asarray(apply(params, {k: jnp.asarray(padded[k], jnp.int32) for k in MODEL_KEYS}))
    out_packed = np.asarray(apply(params, {k: jnp.asarray(packed[k], jnp.int32) for k in MODEL_KEYS}))
    for r, members in enumerate(rows_used):
      start = 0
      for i in members:
        ln = int(batch["length"][i])
        np.testing.assert_allclose(out_packed[r, start : start + ln], out_padded[i, :ln], atol=1e-5, rtol=0)
        start += ln
      assert not out_packed[r, start:].any()
    assert not out_padded[padded["seg"] == 0].any()
    # negative control: merging a row's segments into one sequence changes its outputs
    r = next(r for r, members in enumerate(rows_used) if len(members) > 1)
    merged = dict(packed, seg=np.where(packed["seg"] > 0, 1, 0).astype(packed["seg"].dtype))
    out_merged = np.asarray(apply(params, {k: jnp.asarray(merged[k], jnp.int32) for k in MODEL_KEYS}))
    second = int(batch["length"][rows_used[r][0]])
    assert np.abs(out_merged[r, second:] - out_packed[r, second:]).max() > 1e-3


# ------------------------------------------------------------------------------------------
# Training batches and the grain iterator
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_train_batch_epochs_cover_every_user_once(packed):
  ex = _synthetic_examples(37, 6, seed=4)
  bs, seed = 8, 123
  spe = pipeline.steps_per_epoch(37, bs)
  assert spe == 5
  perms = []
  for epoch in range(2):
    users = []
    for k in range(spe):
      b = pipeline.train_batch(ex, bs, seed, packed, epoch * spe + k)
      assert set(b) == MODEL_KEYS
      users += _users_in(b)
      if not packed:
        assert b["ids"].shape == (bs, 6)
    assert sorted(users) == list(range(37))
    perms.append(users)
  assert perms[0] != perms[1]  # a new permutation every epoch


def test_last_batch_of_epoch_padded_with_empty_users():
  ex = _synthetic_examples(37, 6, seed=5)
  b = pipeline.train_batch(ex, 8, 0, False, 4)  # last batch of epoch 0: 5 users + 3 empty
  assert len(_users_in(b)) == 5
  np.testing.assert_array_equal(b["seg"][5:], 0)
  np.testing.assert_array_equal(b["targets"][5:], 0)
  np.testing.assert_array_equal(b["ids"][5:], 0)
  assert np.count_nonzero(b["targets"]) == sum(ex.length_U[u] for u in _users_in(b))


def test_train_batch_deterministic_in_seed_and_step():
  ex = _synthetic_examples(37, 6, seed=6)
  for packed in (False, True):
    for step in (0, 3, 7):
      a = pipeline.train_batch(ex, 8, 42, packed, step)
      pipeline._permutation.cache_clear()
      b = pipeline.train_batch(ex, 8, 42, packed, step)
      for k in MODEL_KEYS:
        np.testing.assert_array_equal(a[k], b[k])
  a = pipeline.train_batch(ex, 8, 42, False, 1)
  c = pipeline.train_batch(ex, 8, 43, False, 1)
  assert not np.array_equal(a["ids"], c["ids"])


def test_train_iterator_yields_train_batches_and_resumes_from_state():
  ex = _synthetic_examples(37, 6, seed=7)
  bs, seed, steps = 8, 9, 12
  it = pipeline.train_iterator(ex, bs, seed, steps, packed=True)
  for k in range(4):
    got = next(it)
    want = pipeline.train_batch(ex, bs, seed, True, k)
    for key in MODEL_KEYS:
      np.testing.assert_array_equal(got[key], want[key])
  state = it.get_state()
  rest = [next(it) for _ in range(steps - 4)]
  with pytest.raises(StopIteration):
    next(it)
  it2 = pipeline.train_iterator(ex, bs, seed, steps, packed=True)
  it2.set_state(state)
  for want in rest:
    got = next(it2)
    for key in MODEL_KEYS:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("packed", [False, True])
def test_eval_batches_cover_users_in_order_with_their_last_token(packed):
  ex = _synthetic_examples(21, 6, seed=8)
  batches = pipeline.eval_batches(ex, 8, packed=packed, row_multiple=2)
  assert [n for _, n in batches] == [8, 8, 5]
  shapes = {b["ids"].shape for b, _ in batches}
  assert len(shapes) == 1  # one compiled shape for all batches
  seen = 0
  for batch, n in batches:
    assert batch["target"].shape == (8,) and batch["history"].shape == (8, 6)
    for j in range(n):
      u = seen + j
      ln = ex.length_U[u]
      r, last = batch["user_row"][j], batch["user_last"][j]
      # the user's last history token sits at (row, last): marker at its start, same ids
      np.testing.assert_array_equal(batch["ids"][r, last - ln + 1 : last + 1], ex.ids_UxN[u, :ln])
      assert batch["seg"][r, last] > 0
      assert batch["target"][j] == ex.targets_UxN[u, ln - 1]
      np.testing.assert_array_equal(batch["history"][j], ex.ids_UxN[u])
    assert not batch["target"][n:].any()
    seen += n
  assert seen == 21
  if packed:
    assert shapes.pop()[0] < 8  # users really share rows


@pytest.mark.parametrize("packed", [False, True])
def test_eval_batches_filter_every_past_item_when_examples_carry_them(packed):
  import dataclasses

  ex = _synthetic_examples(21, 6, seed=8)
  past = np.random.default_rng(3).integers(1, 99, (21, 15)).astype(np.int32)
  batches = pipeline.eval_batches(dataclasses.replace(ex, past_UxH=past), 8, packed=packed, row_multiple=2)
  got = np.concatenate([b["history"][:n] for b, n in batches])
  np.testing.assert_array_equal(got, past)
  assert all(b["history"].shape == (8, 15) for b, _ in batches)


@pytest.mark.parametrize("model_name", ["hstu", "sasrec"])
def test_packed_and_padded_evaluation_give_identical_ranks_ml100k(ml100k_task, ml100k_config, model_name):
  from genrec_jax.train import trainer

  cfg = ml100k_config(**{"model.name": model_name})
  model = build_model(cfg, ml100k_task.num_items)
  rank = trainer.make_rank_fn(model, ml100k_task.catalog, ml100k_task.num_items)
  dummy = {k: jnp.zeros((1, cfg.data.max_seq_len), jnp.int32) for k in MODEL_KEYS}
  params = model.init({"params": jax.random.key(1)}, dummy)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda a: a + jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), params)
  ranks = {}
  for packed in (False, True):
    out = []
    for batch, n in pipeline.eval_batches(ml100k_task.split.val, 128, packed=packed):
      out.append(np.asarray(rank(params, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}))[:n])
    ranks[packed] = np.concatenate(out)
  assert len(ranks[True]) == 943
  np.testing.assert_array_equal(ranks[True], ranks[False])
  assert len(np.unique(ranks[True])) > 50  # a real spread of ranks, not a constant


def test_ml100k_epoch_supervises_every_training_target_once(ml100k_task):
  ex = ml100k_task.split.train
  bs = 64
  spe = pipeline.steps_per_epoch(len(ex), bs)
  counts = collections.Counter()
  total = 0
  for k in range(spe):
    b = pipeline.train_batch(ex, bs, 1, True, spe + k)  # epoch 1
    t = b["targets"][b["seg"] > 0]
    total += len(t)
    counts.update(t.tolist())
  assert total == int(ex.length_U.sum())
  want = collections.Counter(ex.targets_UxN[ex.targets_UxN > 0].tolist())
  assert counts == want
