"""Blockwise HSTU attention (nn/hstu.py `blockwise_attention`, model.attention_impl='blockwise').

The blockwise path must give the dense path's outputs and gradients:
  * the attention alone against a NumPy loop of the equation
      av[i] = Σ_{j ≤ i, seg[j] = seg[i]} SiLU(q_i·k_j + pos_w[N-1+j-i] + ts_w[bucket]) / n · v_j
    and its gradients against the dense jnp formula (which test_hstu.py checks against NumPy);
  * the whole model with identical parameters, dropout on, packed rows.
Shapes: N not divisible by the block, several segments per row, with and without time bias.
Tolerances (float32): forward atol 2e-5 / rtol 1e-4; gradients max|Δ| ≤ 1e-4 · max|g|.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.hstu_movielens import get_config
from genrec_jax.config import ConfigError
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples
from genrec_jax.models.sequential import build_model
from genrec_jax.nn import hstu


def np_silu(x):
  return x / (1.0 + np.exp(-x))


def np_bucket(dt: int, num_buckets: int = 128) -> int:
  v = math.floor(math.log(max(abs(int(dt)), 1)) / 0.301)
  return min(max(v, 0), num_buckets)


def np_attention(q, k, v, seg, pos_w, ts_w, tq, tk, n_norm):
  """A·V by loops, float64: q, k [B, N, H, Q], v [B, N, H, V] -> [B, N, H, V]."""
  q, k, v, pos_w = (np.asarray(a, np.float64) for a in (q, k, v, pos_w))
  b, n, h, _ = q.shape
  out = np.zeros(v.shape)
  for r in range(b):
    for i in range(n):
      for j in range(i + 1):
        if seg[r, i] != seg[r, j]:
          continue
        rab = pos_w[n - 1 + j - i]
        if ts_w is not None:
          rab += float(ts_w[np_bucket(int(tq[r, i]) - int(tk[r, j]))])
        for hh in range(h):
          out[r, i, hh] += np_silu(q[r, i, hh] @ k[r, j, hh] + rab) / n_norm * v[r, j, hh]
  return out


def dense_attention(q, k, v, seg, pos_w, ts_w, tq, tk, n_norm):
  """The dense path's formula in jnp (what HSTULayer computes for attention_impl='dense')."""
  b, n = seg.shape
  i = jnp.arange(n)
  rab = jnp.broadcast_to(pos_w[n - 1 + i[None, :] - i[:, None]], (b, n, n))
  if ts_w is not None:
    rab = rab + ts_w[hstu.time_buckets(tq, tk)]
  s = jnp.einsum("bnhd,bmhd->bhnm", q, k) + rab[:, None]
  a = jnp.where(hstu.attention_mask(seg)[:, None], jax.nn.silu(s) / n_norm, 0.0)
  return jnp.einsum("bhnm,bmhd->bnhd", a, v)


def _inputs(n: int, seed: int, b: int = 2, h: int = 2, d: int = 8):
  """Random q, k, v and rab weights; row 0 packs three users and padding, row 1 holds one user."""
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(0, 0.7, (b, n, h, d)), jnp.float32) for _ in range(3))
  seg = np.zeros((b, n), np.int32)
  cut1, cut2, cut3 = n // 3, (2 * n) // 3, n - 2
  seg[0, :cut1], seg[0, cut1:cut2], seg[0, cut2:cut3] = 1, 2, 3
  seg[1:, : n - 1] = 1
  ts = np.sort(rng.integers(10**8, 10**8 + 10**7, (b, n + 1)), axis=1)
  tk, tq = jnp.asarray(ts[:, :n], jnp.int32), jnp.asarray(ts[:, 1:], jnp.int32)
  pos_w = jnp.asarray(rng.normal(0, 0.5, 2 * n - 1), jnp.float32)
  ts_w = jnp.asarray(rng.normal(0, 0.5, 129), jnp.float32)
  return q, k, v, jnp.asarray(seg), pos_w, ts_w, tq, tk


@pytest.mark.parametrize("n,block,use_time", [(13, 4, True), (13, 4, False), (10, 16, True)])
def test_blockwise_attention_matches_numpy(n, block, use_time):
  q, k, v, seg, pos_w, ts_w, tq, tk = _inputs(n, seed=n + block)
  ts_w = ts_w if use_time else None
  got = hstu.blockwise_attention(q, k, v, seg, pos_w, ts_w, tq, tk, 17, block)
  want = np_attention(q, k, v, np.asarray(seg), pos_w, ts_w, np.asarray(tq), np.asarray(tk), 17)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    "n,block,use_time", [(37, 8, True), (29, 16, False), (32, 8, False), (20, 128, True)]
)
def test_blockwise_attention_matches_dense_forward_and_gradients(n, block, use_time):
  q, k, v, seg, pos_w, ts_w, tq, tk = _inputs(n, seed=n, b=3)
  ts_w = ts_w if use_time else None
  w_out = jnp.asarray(np.random.default_rng(1).normal(size=(3, n, 2, 8)), jnp.float32)

  def loss(impl, q, k, v, pos_w, ts_w):
    out = impl(q, k, v, seg, pos_w, ts_w, tq, tk, n)
    return jnp.sum(jnp.sin(out) * w_out), out

  blockwise = lambda *a: hstu.blockwise_attention(*a, block=block)
  args = (q, k, v, pos_w, ts_w)
  argnums = (0, 1, 2, 3, 4) if use_time else (0, 1, 2, 3)
  (_, want), g_want = jax.jit(jax.value_and_grad(lambda *a: loss(dense_attention, *a), argnums, has_aux=True))(*args)
  (_, got), g_got = jax.jit(jax.value_and_grad(lambda *a: loss(blockwise, *a), argnums, has_aux=True))(*args)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=2e-5)
  for name, a, b in zip(("q", "k", "v", "pos_w", "ts_w"), g_got, g_want):
    scale = float(jnp.max(jnp.abs(b)))
    assert scale > 0, name
    err = float(jnp.max(jnp.abs(a - b)))
    assert err <= 1e-4 * scale, (name, err, scale)


def test_blockwise_attention_ignores_keys_above_the_diagonal_and_other_segments():
  """Changing a future key/value or another segment's does not change a query's output."""
  q, k, v, seg, pos_w, ts_w, tq, tk = _inputs(20, seed=3)
  base = hstu.blockwise_attention(q, k, v, seg, pos_w, ts_w, tq, tk, 20, 8)
  # Row 1 holds one user: perturbing key/value 12 changes outputs 12.. only.
  k2, v2 = k.at[1, 12].add(3.0), v.at[1, 12].add(3.0)
  out = hstu.blockwise_attention(q, k2, v2, seg, pos_w, ts_w, tq, tk, 20, 8)
  diff = np.abs(np.asarray(out - base)).max(axis=(2, 3))
  assert np.all(diff[1, :12] == 0) and np.all(diff[1, 12:19] > 0)
  # Row 0: segment 1 is positions 0..5; changing segment 2 (6..12) leaves segments 1 and 3 alone.
  k3 = k.at[0, 6:13].add(3.0)
  out = hstu.blockwise_attention(q, k3, v, seg, pos_w, ts_w, tq, tk, 20, 8)
  diff = np.abs(np.asarray(out - base)).max(axis=(2, 3))
  assert np.all(diff[0, :6] == 0) and np.all(diff[0, 13:] == 0) and np.all(diff[0, 6:13] > 0)


# ------------------------------------------------------------------------------------------
# Model: config switch, identical parameters, dropout
# ------------------------------------------------------------------------------------------


def _cfg(impl: str, block: int = 8):
  cfg = get_config()
  cfg.data.max_seq_len = 20
  cfg.model.embed_dim = cfg.model.dqk = cfg.model.dv = 8
  cfg.model.num_heads = 2
  cfg.model.num_blocks = 1
  cfg.model.attn_norm_len = 31
  cfg.model.attention_impl = impl
  cfg.model.attention_block = block
  return cfg


def _packed_batch(num_items: int, n: int):
  rng = np.random.default_rng(0)
  lengths = np.array([20, 7, 5, 13, 3, 0], np.int32)
  u = len(lengths)
  ids, targets = np.zeros((u, n), np.int32), np.zeros((u, n), np.int32)
  ts = np.zeros((u, n + 1), np.int64)
  for i, ln in enumerate(lengths):
    ids[i, :ln] = rng.integers(1, num_items, ln)
    targets[i, :ln] = rng.integers(1, num_items, ln)
    ts[i, : ln + 1] = np.sort(rng.integers(9 * 10**8, 9 * 10**8 + 10**7, ln + 1))
  ex = Examples(ids, ts, targets, lengths, np.arange(u))
  batch = pipeline.pack(ex.take(np.arange(u)), row_multiple=1)
  assert batch["seg"].max() >= 2
  return {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


def test_model_blockwise_equals_dense_with_dropout(use_time=True):
  """Same params (same tree, same init), same dropout rng: same outputs and gradients.

  (Without time bias is covered at the attention level above; one compile pair keeps this short.)
  """
  num_items = 17
  cfg_d, cfg_b = _cfg("dense"), _cfg("blockwise")
  cfg_d.model.use_time_bias = cfg_b.model.use_time_bias = use_time
  dense, blockwise = build_model(cfg_d, num_items), build_model(cfg_b, num_items)
  batch = _packed_batch(num_items, 20)
  p_dense = jax.jit(dense.init)({"params": jax.random.key(0)}, batch)["params"]
  p_block = jax.jit(blockwise.init)({"params": jax.random.key(0)}, batch)["params"]
  assert jax.tree_util.tree_structure(p_dense) == jax.tree_util.tree_structure(p_block)
  for a, b in zip(jax.tree_util.tree_leaves(p_dense), jax.tree_util.tree_leaves(p_block)):
    np.testing.assert_array_equal(a, b)
  assert ("ts_w" in p_dense["encoder"]["layer_0"]["rab"]) == use_time

  def loss(model, params):
    y = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": jax.random.key(5)})
    return jnp.sum(jnp.sin(3 * y)), y

  (_, y_d), g_d = jax.jit(jax.value_and_grad(lambda p: loss(dense, p), has_aux=True))(p_dense)
  (_, y_b), g_b = jax.jit(jax.value_and_grad(lambda p: loss(blockwise, p), has_aux=True))(p_dense)
  np.testing.assert_allclose(np.asarray(y_b), np.asarray(y_d), rtol=1e-4, atol=2e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_b), jax.tree_util.tree_leaves(g_d)):
    scale = float(jnp.max(jnp.abs(b)))
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale + 1e-7, jax.tree_util.keystr(path)


def test_build_model_rejects_bad_attention_config():
  cfg = _cfg("flash")
  with pytest.raises(ConfigError, match="attention_impl"):
    build_model(cfg, 13)
  cfg = _cfg("blockwise", block=0)
  with pytest.raises(ConfigError, match="attention_block"):
    build_model(cfg, 13)


def _temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_backward_memory_grows_linearly_in_n():
  """XLA's temp buffers for attention + backward: dense grows ~N², blockwise ~N."""
  def grad_fn(impl):
    def f(q, k, v, seg, pos_w, ts_w, tq, tk):
      return jax.grad(lambda q, k, v: jnp.sum(impl(q, k, v, seg, pos_w, ts_w, tq, tk, 100)), (0, 1, 2))(q, k, v)
    return f

  blockwise = lambda *a: hstu.blockwise_attention(*a, block=64)
  temps = {}
  for n in (512, 1024):
    args = _inputs(n, seed=0, b=1, h=1, d=16)
    temps["dense", n] = _temp_bytes(grad_fn(dense_attention), *args)
    temps["blockwise", n] = _temp_bytes(grad_fn(blockwise), *args)
  assert temps["dense", 1024] > 3.5 * temps["dense", 512]
  assert temps["blockwise", 1024] < 2.5 * temps["blockwise", 512]
  assert temps["blockwise", 1024] * 8 < temps["dense", 1024]
