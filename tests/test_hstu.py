"""HSTU (genrec_jax/nn/hstu.py) and the HSTU SequentialRecommender against plain NumPy.

The NumPy references below are written from the equations (loops where that makes them
obviously right), in float64:

  x_n   = LN(x)                                    no affine, eps 1e-6
  U,V,Q,K = split(SiLU(x_n @ W_uvqk), [H·dv, H·dv, H·dqk, H·dqk])
  rab[i,j] = pos_w[N-1+j-i] + ts_w[bucket(tq[i] - tk[j])]
  a[i,j] = SiLU(q_i·k_j + rab[i,j]) / n_norm  if j <= i and seg[i] == seg[j] else 0
  y = (U * LN(a @ V)) @ W_o + b_o + x
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.hstu_movielens import get_config
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples
from genrec_jax.models.sequential import build_model
from genrec_jax.nn import hstu

# ------------------------------------------------------------------------------------------
# NumPy reference
# ------------------------------------------------------------------------------------------


def np_silu(x):
  return x / (1.0 + np.exp(-x))


def np_layer_norm(x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps)


def np_bucket(dt: int, num_buckets: int = 128) -> int:
  """clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, num_buckets), in float64 Python math."""
  v = math.floor(math.log(max(abs(int(dt)), 1)) / 0.301)
  return min(max(v, 0), num_buckets)


def np_rab(pos_w, ts_w, tq, tk, use_time=True, num_buckets=128):
  n = len(tq)
  rab = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      rab[i, j] = pos_w[n - 1 + j - i]
      if use_time:
        rab[i, j] += ts_w[np_bucket(int(tq[i]) - int(tk[j]), num_buckets)]
  return rab


def np_hstu_layer(x, seg, tq, tk, p, h, dqk, dv, n_norm, use_time=True):
  """One HSTU layer on one row x [N, D] (float64)."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  n, _ = x.shape
  proj = np_silu(np_layer_norm(x, 1e-6) @ p["uvqk"])
  u = proj[:, : h * dv]
  v = proj[:, h * dv : 2 * h * dv]
  q = proj[:, 2 * h * dv : 2 * h * dv + h * dqk]
  k = proj[:, 2 * h * dv + h * dqk :]
  assert k.shape[1] == h * dqk
  rab = np_rab(p["rab"]["pos_w"], p["rab"].get("ts_w"), tq, tk, use_time)
  av = np.zeros((n, h * dv))
  for head in range(h):
    qs, vs = slice(head * dqk, (head + 1) * dqk), slice(head * dv, (head + 1) * dv)
    for i in range(n):
      for j in range(n):
        if j <= i and seg[i] == seg[j]:
          a = np_silu(q[i, qs] @ k[j, qs] + rab[i, j]) / n_norm
          av[i, vs] += a * v[j, vs]
  o = u * np_layer_norm(av, 1e-6)
  return o @ p["o"]["kernel"] + p["o"]["bias"] + x


def np_hstu_model(batch, params, cfg):
  """SequentialRecommender (hstu) forward on a model batch, row by row, float64."""
  m = cfg.model
  d = m.embed_dim
  item_emb = np.asarray(params["item_emb"], np.float64)
  pos_emb = np.asarray(params["pos_emb"], np.float64)
  rows, n = batch["ids"].shape
  out = np.zeros((rows, n, d))
  for r in range(rows):
    seg = batch["seg"][r]
    x = np.zeros((n, d))
    for t in range(n):
      if seg[t] != 0:
        x[t] = item_emb[batch["ids"][r, t]] * math.sqrt(d) + pos_emb[batch["pos"][r, t]]
    for b in range(m.num_blocks):
      x = np_hstu_layer(
          x, seg, batch["ts_query"][r], batch["ts_key"][r], params["encoder"][f"layer_{b}"],
          m.num_heads, m.dqk, m.dv, m.attn_norm_len, m.use_time_bias,
      )
    for t in range(n):
      if seg[t] != 0:
        out[r, t] = x[t] / max(np.linalg.norm(x[t]), 1e-6)
  return out


def perturb(params, seed: int, scale: float):
  """Same pytree, random values of a given scale, so every term of the equations matters."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rng.normal(0, scale, l.shape), jnp.float32) for l in leaves]
  )



# ------------------------------------------------------------------------------------------
# Time buckets
# ------------------------------------------------------------------------------------------


def _buckets_for(dts, num_buckets=128, base=1_000_000_000):
  """JAX buckets for query-key gaps `dts` (one key, many queries)."""
  tq = jnp.asarray([[base + int(dt) for dt in dts]], jnp.int32)
  tk = jnp.asarray([[base]], jnp.int32)
  return np.asarray(hstu.time_buckets(tq, tk, num_buckets))[0, :, 0]


def test_time_buckets_hand_picked_values():
  dts = [0, 1, -1, 2, -2, 3, 100, -100, 1000, 86400, 10**9, -(10**9)]
  # ln(2)/.301 = 2.30, ln(3)/.301 = 3.65, ln(100)/.301 = 15.30, ln(1000)/.301 = 22.95,
  # ln(86400)/.301 = 37.75, ln(1e9)/.301 = 68.85
  want = [0, 0, 0, 2, 2, 3, 15, 15, 22, 37, 68, 68]
  assert [np_bucket(dt) for dt in dts] == want
  np.testing.assert_array_equal(_buckets_for(dts), want)


def test_time_buckets_clamp_to_num_buckets():
  dts = [0, 2, 100, 10**6, 10**9]
  got = _buckets_for(dts, num_buckets=10)
  np.testing.assert_array_equal(got, [0, 2, 10, 10, 10])


def test_time_buckets_at_bucket_boundaries():
  """dt around exp(0.301 k): the bucket changes from k-1 to k exactly there."""
  dts, want = [], []
  for k in range(1, 72):
    c = math.exp(0.301 * k)
    for dt in (math.floor(c) - 1, math.floor(c), math.ceil(c), math.ceil(c) + 1):
      if 1 <= dt < 2**31 - 2**30:
        dts.append(dt)
        want.append(np_bucket(dt))
        if k >= 10 and abs(dt - c) < 1:  # boundaries are > 1 s apart from k = 10 on
          assert want[-1] == (k - 1 if dt < c else k)
  got = _buckets_for(dts, base=0)
  exact = np.array([dt == 1 or abs(math.log(dt) / 0.301 - round(math.log(dt) / 0.301)) > 1e-5 for dt in dts])
  # Where ln(dt)/0.301 is not within float32 precision of an integer, the bucket is exact.
  np.testing.assert_array_equal(got[exact], np.asarray(want)[exact])
  assert exact[np.asarray(dts) < 20_000].all()  # boundaries up to k = 32 are checked exactly
  # Closer than float32 resolution (float32 log, like the reference's torch.log): off by <= 1.
  assert np.all(np.abs(got - np.asarray(want)) <= 1)


def test_time_buckets_query_minus_key_layout():
  """bucket[b, i, j] uses tq[b, i] - tk[b, j] (not the transpose)."""
  rng = np.random.default_rng(0)
  tq = rng.integers(0, 10**7, (2, 5))
  tk = rng.integers(0, 10**7, (2, 5))
  got = np.asarray(hstu.time_buckets(jnp.asarray(tq, jnp.int32), jnp.asarray(tk, jnp.int32)))
  for b in range(2):
    for i in range(5):
      for j in range(5):
        assert got[b, i, j] == np_bucket(tq[b, i] - tk[b, j]), (b, i, j)


# ------------------------------------------------------------------------------------------
# Masks and relative attention bias
# ------------------------------------------------------------------------------------------


def test_attention_mask_causal_within_segment():
  seg = np.array([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
  got = np.asarray(hstu.attention_mask(jnp.asarray(seg)))
  for b in range(2):
    for i in range(7):
      for j in range(7):
        assert got[b, i, j] == (j <= i and seg[b, i] == seg[b, j])


def test_relative_bias_matches_numpy():
  n = 6
  rng = np.random.default_rng(1)
  tq = rng.integers(10**8, 10**8 + 10**6, (2, n))
  tk = rng.integers(10**8, 10**8 + 10**6, (2, n))
  buckets = hstu.time_buckets(jnp.asarray(tq, jnp.int32), jnp.asarray(tk, jnp.int32))
  mod = hstu.RelativeBucketedTimeAndPositionBias(max_len=n)
  params = perturb(mod.init(jax.random.key(0), buckets)["params"], seed=2, scale=1.0)
  got = np.asarray(mod.apply({"params": params}, buckets))
  for b in range(2):
    want = np_rab(np.asarray(params["pos_w"]), np.asarray(params["ts_w"]), tq[b], tk[b])
    np.testing.assert_allclose(got[b], want, rtol=1e-6, atol=1e-6)
  # Without the time term only the Toeplitz position bias remains, shared by the batch.
  pos_only = hstu.RelativeBucketedTimeAndPositionBias(max_len=n, use_time=False)
  got = np.asarray(pos_only.apply({"params": {"pos_w": params["pos_w"]}}, None))
  assert got.shape == (1, n, n)
  np.testing.assert_allclose(got[0], np_rab(np.asarray(params["pos_w"]), None, tq[0], tk[0], False))


# ------------------------------------------------------------------------------------------
# One HSTU layer
# ------------------------------------------------------------------------------------------


def _layer_inputs(seed: int):
  rng = np.random.default_rng(seed)
  b, n, d = 2, 7, 8
  x = rng.normal(0, 1, (b, n, d))
  # row 0: two packed sequences and padding; row 1: one full sequence.
  seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
  tk = np.sort(rng.integers(9 * 10**8, 9 * 10**8 + 10**7, (b, n)), axis=1)
  tq = tk + rng.integers(0, 10**6, (b, n))
  return x, seg, tq, tk


@pytest.mark.parametrize("use_time", [True, False])
def test_hstu_layer_matches_numpy(use_time):
  h, dqk, dv, n_norm = 2, 3, 4, 11
  x, seg, tq, tk = _layer_inputs(seed=3)
  layer = hstu.HSTULayer(
      num_heads=h, dqk=dqk, dv=dv, dropout_rate=0.5, attn_norm_len=n_norm, use_time_bias=use_time
  )
  mask = hstu.attention_mask(jnp.asarray(seg))
  buckets = hstu.time_buckets(jnp.asarray(tq, jnp.int32), jnp.asarray(tk, jnp.int32)) if use_time else None
  xj = jnp.asarray(x, jnp.float32)
  params = layer.init(jax.random.key(0), xj, buckets, mask, True)["params"]
  assert params["uvqk"].shape == (8, 2 * h * dv + 2 * h * dqk)
  assert set(params) == {"uvqk", "rab", "o"}  # no bias on the uvqk projection
  for p in (params, perturb(params, seed=4, scale=0.5)):
    got = np.asarray(layer.apply({"params": p}, xj, buckets, mask, True))
    for b in range(2):
      want = np_hstu_layer(x[b], seg[b], tq[b], tk[b], p, h, dqk, dv, n_norm, use_time)
      np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-4)


def test_hstu_layer_dropout_only_in_training():
  x, seg, tq, tk = _layer_inputs(seed=5)
  layer = hstu.HSTULayer(num_heads=1, dqk=4, dv=4, dropout_rate=0.5, attn_norm_len=7)
  mask = hstu.attention_mask(jnp.asarray(seg))
  buckets = hstu.time_buckets(jnp.asarray(tq, jnp.int32), jnp.asarray(tk, jnp.int32))
  xj = jnp.asarray(x, jnp.float32)
  params = perturb(layer.init(jax.random.key(0), xj, buckets, mask, True)["params"], 6, 0.5)
  det1 = layer.apply({"params": params}, xj, buckets, mask, True)
  det2 = layer.apply({"params": params}, xj, buckets, mask, True)
  np.testing.assert_array_equal(det1, det2)
  train = layer.apply({"params": params}, xj, buckets, mask, False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(train, det1, atol=1e-3)


def test_hstu_layer_is_causal_within_segment():
  """Changing a later token, or another segment, leaves earlier outputs unchanged."""
  x, seg, tq, tk = _layer_inputs(seed=7)
  layer = hstu.HSTULayer(num_heads=2, dqk=3, dv=4, dropout_rate=0.0, attn_norm_len=7)
  mask = hstu.attention_mask(jnp.asarray(seg))
  buckets = hstu.time_buckets(jnp.asarray(tq, jnp.int32), jnp.asarray(tk, jnp.int32))
  params = perturb(layer.init(jax.random.key(0), jnp.asarray(x, jnp.float32), buckets, mask, True)["params"], 8, 0.5)
  y0 = np.asarray(layer.apply({"params": params}, jnp.asarray(x, jnp.float32), buckets, mask, True))
  x2 = x.copy()
  x2[0, 4] += 3.0  # last token of segment 2 in row 0
  x2[1, 6] += 3.0  # last token of row 1
  y1 = np.asarray(layer.apply({"params": params}, jnp.asarray(x2, jnp.float32), buckets, mask, True))
  np.testing.assert_array_equal(y0[0, :4], y1[0, :4])
  np.testing.assert_array_equal(y0[1, :6], y1[1, :6])
  assert not np.allclose(y0[0, 4], y1[0, 4])


# ------------------------------------------------------------------------------------------
# Full SequentialRecommender (hstu, 2 blocks)
# ------------------------------------------------------------------------------------------


def _small_cfg():
  cfg = get_config()
  cfg.data.max_seq_len = 6
  cfg.model.embed_dim = 8
  cfg.model.num_blocks = 2
  cfg.model.num_heads = 2
  cfg.model.dqk = 3
  cfg.model.dv = 4
  cfg.model.attn_norm_len = 211
  return cfg


def _hand_examples(num_items: int, n: int) -> Examples:
  rng = np.random.default_rng(11)
  lengths = np.array([6, 2, 4, 0, 1], np.int32)
  ids = np.zeros((5, n), np.int32)
  ts = np.zeros((5, n + 1), np.int64)
  targets = np.zeros((5, n), np.int32)
  for u, ln in enumerate(lengths):
    ids[u, :ln] = rng.integers(1, num_items, ln)
    targets[u, :ln] = rng.integers(1, num_items, ln)
    ts[u, : ln + 1] = np.sort(rng.integers(9 * 10**8, 9 * 10**8 + 10**7, ln + 1))
  return Examples(ids, ts, targets, lengths, np.arange(5))


def test_hstu_model_forward_matches_numpy():
  cfg = _small_cfg()
  num_items = 13
  model = build_model(cfg, num_items)
  ex = _hand_examples(num_items, cfg.data.max_seq_len)
  batch = pipeline.padded_to_model(ex.take(np.arange(len(ex))))
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  params = model.init({"params": jax.random.key(0)}, jbatch)["params"]
  for p in (params, perturb(params, seed=12, scale=0.3)):
    got = np.asarray(model.apply({"params": p}, jbatch, deterministic=True))
    want = np_hstu_model(batch, p, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    valid = batch["seg"] != 0
    np.testing.assert_allclose(np.linalg.norm(got[valid], axis=-1), 1.0, rtol=1e-5)
    assert np.all(got[~valid] == 0)


def test_hstu_model_forward_packed_matches_numpy():
  """Packed rows (several users per row, positions restart per user) against NumPy."""
  cfg = _small_cfg()
  cfg.model.num_heads = 1
  num_items = 13
  model = build_model(cfg, num_items)
  ex = _hand_examples(num_items, cfg.data.max_seq_len)
  batch = pipeline.pack(ex.take(np.arange(len(ex))), row_multiple=1)
  assert batch["seg"].max() >= 2  # at least one row really holds several users
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  params = perturb(model.init({"params": jax.random.key(0)}, jbatch)["params"], 13, 0.3)
  got = np.asarray(model.apply({"params": params}, jbatch, deterministic=True))
  np.testing.assert_allclose(got, np_hstu_model(batch, params, cfg), rtol=1e-4, atol=2e-5)


def test_hstu_model_attn_norm_len_defaults_to_max_seq_len():
  cfg = _small_cfg()
  cfg.model.attn_norm_len = 0  # unset: n = max_seq_len
  model = build_model(cfg, 13)
  ex = _hand_examples(13, cfg.data.max_seq_len)
  batch = pipeline.padded_to_model(ex.take(np.arange(len(ex))))
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  params = perturb(model.init({"params": jax.random.key(0)}, jbatch)["params"], 15, 0.3)
  got = np.asarray(model.apply({"params": params}, jbatch, deterministic=True))
  ref_cfg = _small_cfg()
  ref_cfg.model.attn_norm_len = cfg.data.max_seq_len
  np.testing.assert_allclose(got, np_hstu_model(batch, params, ref_cfg), rtol=1e-4, atol=2e-5)


def test_build_model_unknown_name():
  cfg = _small_cfg()
  cfg.model.name = "bert4rec"
  with pytest.raises(ValueError, match="unknown model"):
    build_model(cfg, 13)


def test_item_table_is_l2_normalised():
  cfg = _small_cfg()
  model = build_model(cfg, 13)
  ex = _hand_examples(13, cfg.data.max_seq_len)
  jbatch = {k: jnp.asarray(v, jnp.int32) for k, v in pipeline.padded_to_model(ex.take(np.arange(5))).items()}
  params = perturb(model.init({"params": jax.random.key(0)}, jbatch)["params"], 14, 1.0)
  params["item_emb"] = params["item_emb"].at[0].set(0.0)
  table = np.asarray(model.apply({"params": params}, method=model.item_table))
  emb = np.asarray(params["item_emb"], np.float64)
  want = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-6)
  np.testing.assert_allclose(table, want, rtol=1e-5, atol=1e-7)
  assert np.all(table[0] == 0) and np.all(np.isfinite(table))
