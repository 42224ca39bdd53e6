"""SASRec blocks (genrec_jax/nn/transformer.py) against a plain NumPy implementation.

  q  = LN(x)                                   no affine, eps 1e-8
  m  = MHA(query=q, key=x, value=x)            causal within the segment, softmax(QKᵀ/√d_h)
  y  = FFN(LN(q + m)),  FFN(z) = z + W2 ReLU(W1 z + b1) + b2
  x' = y ⊙ valid_mask
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.hstu_movielens import get_config
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples
from genrec_jax.models.sequential import build_model
from genrec_jax.nn import hstu, transformer


def np_layer_norm(x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps)


def np_mha(q_in, kv_in, seg, p, h):
  """torch.nn.MultiheadAttention(query=q_in, key=kv_in, value=kv_in) with a causal-in-segment mask."""
  n, d = q_in.shape
  dh = d // h
  w, b = p["in_proj"], p["in_proj_bias"]
  q = q_in @ w[:, :d] + b[:d]
  k = kv_in @ w[:, d : 2 * d] + b[d : 2 * d]
  v = kv_in @ w[:, 2 * d :] + b[2 * d :]
  out = np.zeros((n, d))
  for head in range(h):
    s = slice(head * dh, (head + 1) * dh)
    for i in range(n):
      allowed = [j for j in range(n) if j <= i and seg[j] == seg[i]]
      logits = np.array([q[i, s] @ k[j, s] / math.sqrt(dh) for j in allowed])
      weights = np.exp(logits - logits.max())
      weights /= weights.sum()
      for wt, j in zip(weights, allowed):
        out[i, s] += wt * v[j, s]
  return out @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


def np_ffn(z, p):
  hidden = np.maximum(z @ p["w1"]["kernel"] + p["w1"]["bias"], 0.0)
  return z + hidden @ p["w2"]["kernel"] + p["w2"]["bias"]


def np_sasrec(x, seg, params, num_blocks, h):
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  mask = (seg != 0).astype(np.float64)
  for i in range(num_blocks):
    q = np_layer_norm(x, 1e-8)
    m = np_mha(q, x, seg, p[f"attn_{i}"], h)
    y = np_ffn(np_layer_norm(q + m, 1e-8), p[f"ffn_{i}"])
    x = y * mask[:, None]
  return x


def perturb(params, seed: int, scale: float):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rng.normal(0, scale, l.shape), jnp.float32) for l in leaves]
  )



def small_sasrec(seed: int, **model_fields):
  """A tiny SASRec (N = 6, D = 8, 2 heads, FFN 16, 11 item rows) with `model_fields` set, and
  five users of lengths 6, 3, 2, 0, 1 as one-user-per-row and packed model batches."""
  cfg = get_config()
  cfg.model.name = "sasrec"
  cfg.data.max_seq_len = 6
  cfg.model.embed_dim = 8
  cfg.model.num_blocks = 2
  cfg.model.num_heads = 2
  cfg.model.ffn_hidden_dim = 16
  for k, v in model_fields.items():
    cfg.model[k] = v
  num_items = 11
  rng = np.random.default_rng(seed)
  lengths = np.array([6, 3, 2, 0, 1], np.int32)
  ids = np.zeros((5, 6), np.int32)
  for u, ln in enumerate(lengths):
    ids[u, :ln] = rng.integers(1, num_items, ln)
  ex = Examples(ids, np.zeros((5, 7), np.int64), ids.copy(), lengths, np.arange(5))
  rows = np.arange(5)
  return build_model(cfg, num_items), pipeline.padded_to_model(ex.take(rows)), pipeline.pack(ex.take(rows), 1)


SEG = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0]])


def test_sasrec_encoder_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (3, 7, 8)) * (SEG != 0)[..., None]
  enc = transformer.SASRecEncoder(num_blocks=2, num_heads=2, ffn_hidden_dim=12, dropout_rate=0.3)
  xj, segj = jnp.asarray(x, jnp.float32), jnp.asarray(SEG)
  params = enc.init(jax.random.key(0), xj, segj, True)["params"]
  assert params["attn_0"]["in_proj"].shape == (8, 24)
  for p in (params, perturb(params, seed=1, scale=0.4)):
    got = np.asarray(enc.apply({"params": p}, xj, segj, True))
    for b in range(3):
      want = np_sasrec(x[b], SEG[b], p, num_blocks=2, h=2)
      np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-4)
    assert np.all(got[SEG == 0] == 0)


def test_causal_self_attention_key_value_differs_from_query():
  """Query comes from one tensor, keys and values from another (q = LN(x), k = v = x)."""
  rng = np.random.default_rng(2)
  q_in, kv_in = rng.normal(0, 1, (1, 7, 8)), rng.normal(0, 1, (1, 7, 8))
  seg = SEG[:1]
  attn = transformer.CausalSelfAttention(num_heads=4, dropout_rate=0.0)
  mask = hstu.attention_mask(jnp.asarray(seg))
  args = (jnp.asarray(q_in, jnp.float32), jnp.asarray(kv_in, jnp.float32), mask, True)
  params = perturb(attn.init(jax.random.key(0), *args)["params"], seed=3, scale=0.5)
  got = np.asarray(attn.apply({"params": params}, *args))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  np.testing.assert_allclose(got[0], np_mha(q_in[0], kv_in[0], seg[0], p, 4), rtol=1e-4, atol=1e-5)


def test_sasrec_attention_dropout_only_in_training():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(0, 1, (3, 7, 8)) * (SEG != 0)[..., None], jnp.float32)
  enc = transformer.SASRecEncoder(num_blocks=1, num_heads=1, ffn_hidden_dim=8, dropout_rate=0.5)
  params = perturb(enc.init(jax.random.key(0), x, jnp.asarray(SEG), True)["params"], 5, 0.4)
  det = enc.apply({"params": params}, x, jnp.asarray(SEG), True)
  train = enc.apply({"params": params}, x, jnp.asarray(SEG), False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(det, train, atol=1e-3)
  assert np.all(np.asarray(train)[SEG == 0] == 0)


def test_sasrec_model_forward_matches_numpy_padded_and_packed():
  model, padded, packed = small_sasrec(6)
  for batch in (padded, packed):
    jb = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    params = perturb(model.init({"params": jax.random.key(0)}, jb)["params"], 7, 0.4)
    got = np.asarray(model.apply({"params": params}, jb, deterministic=True))
    emb, pos = np.asarray(params["item_emb"], np.float64), np.asarray(params["pos_emb"], np.float64)
    for r in range(batch["ids"].shape[0]):
      seg = batch["seg"][r]
      x = (emb[batch["ids"][r]] * math.sqrt(8) + pos[batch["pos"][r]]) * (seg != 0)[:, None]
      y = np_sasrec(x, seg, params["encoder"], 2, 2)
      norm = np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-6)
      np.testing.assert_allclose(got[r], y / norm * (seg != 0)[:, None], rtol=1e-4, atol=2e-5)


def test_sasrec_dot_score_is_final_affine_layer_norm_and_raw_table():
  """model.score='dot' (the original SASRec with BCE): u = LN(y)·γ + β, items scored by E[i]."""
  cfg = get_config()
  cfg.model.name = "sasrec"
  cfg.model.score = "dot"
  cfg.data.max_seq_len = 5
  cfg.model.embed_dim = 8
  cfg.model.num_blocks = 1
  cfg.model.num_heads = 1
  cfg.model.ffn_hidden_dim = 8
  num_items = 9
  model = build_model(cfg, num_items)
  lengths = np.array([5, 2], np.int32)
  ids = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], np.int32)
  ex = Examples(ids, np.zeros((2, 6), np.int64), ids.copy(), lengths, np.arange(2))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in pipeline.padded_to_model(ex.take(np.arange(2))).items()}
  params = perturb(model.init({"params": jax.random.key(0)}, batch)["params"], 3, 0.4)
  got = np.asarray(model.apply({"params": params}, batch, deterministic=True))
  emb, pos = np.asarray(params["item_emb"], np.float64), np.asarray(params["pos_emb"], np.float64)
  gamma, beta = np.asarray(params["out_norm"]["scale"]), np.asarray(params["out_norm"]["bias"])
  for r in range(2):
    seg = np.asarray(batch["seg"][r])
    x = (emb[ids[r]] * math.sqrt(8) + pos[np.asarray(batch["pos"][r])]) * (seg != 0)[:, None]
    y = np_sasrec(x, seg, params["encoder"], 1, 1)
    want = (np_layer_norm(y, 1e-8) * gamma + beta) * (seg != 0)[:, None]
    np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=2e-5)
  table = np.asarray(model.apply({"params": params}, method=model.item_table))
  np.testing.assert_allclose(table, emb, rtol=1e-6)  # not normalised


def test_positions_end_are_left_padded_window_positions_padded_and_packed():
  """model.positions='end' (the original SASRec): the t-th of L events gets P[N − L + t], in the
  one-user-per-row and the packed layouts alike; 'start' gets P[t]."""
  model, padded, packed = small_sasrec(8, positions="end", num_blocks=1)
  lengths = padded["length"]
  assert packed["ids"].shape[0] < 5  # several users share a row
  for batch in (padded, packed):
    jb = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    params = perturb(model.init({"params": jax.random.key(0)}, jb)["params"], 9, 0.4)
    got = np.asarray(model.apply({"params": params}, jb, deterministic=True))
    emb, pos = np.asarray(params["item_emb"], np.float64), np.asarray(params["pos_emb"], np.float64)
    for r in range(batch["ids"].shape[0]):
      seg = batch["seg"][r]
      seg_len = np.array([np.sum(seg == s) for s in seg])
      left_padded = np.where(seg != 0, batch["pos"][r] + 6 - seg_len, 0)
      if r == 0 and batch is padded:
        np.testing.assert_array_equal(left_padded, np.arange(6))  # a full window: unchanged
      x = (emb[batch["ids"][r]] * math.sqrt(8) + pos[left_padded]) * (seg != 0)[:, None]
      y = np_sasrec(x, seg, params["encoder"], 1, 2)
      norm = np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-6)
      np.testing.assert_allclose(got[r], y / norm * (seg != 0)[:, None], rtol=1e-4, atol=2e-5)
  # The newest event of every user sits at N − 1 = 5.
  last = [np.flatnonzero(padded["seg"][u])[-1] for u in range(5) if lengths[u]]
  seg0 = padded["seg"]
  got_pos = np.where(seg0 != 0, padded["pos"] + 6 - seg0.sum(1, keepdims=True), 0)
  assert all(got_pos[u, t] == 5 for u, t in zip([0, 1, 2, 4], last))


def np_gelu(x):
  from math import erf

  return 0.5 * x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0)))


def np_affine_ln(x, p, eps=1e-12):
  return np_layer_norm(x, eps) * np.asarray(p["scale"], np.float64) + np.asarray(p["bias"], np.float64)


def np_post_ln_sasrec(p, ids, pos, seg, num_blocks, num_heads):
  """NumPy post-LN SASRec of one row: x = LN(E + P), then per block H = LN(X + MHA(X)),
  X' = LN(H + W2 GELU(W1 H + b1) + b2), zero at padding."""
  enc, mask = p["encoder"], (seg != 0)[:, None]
  x = np_affine_ln(p["item_emb"][ids] + p["pos_emb"][pos], p["input_ln"]) * mask
  for i in range(num_blocks):
    h = np_affine_ln(x + np_mha(x, x, seg, enc[f"attn_{i}"], num_heads), enc[f"attn_norm_{i}"])
    f = np_gelu(h @ enc[f"ffn_{i}_w1"]["kernel"] + enc[f"ffn_{i}_w1"]["bias"])
    f = f @ enc[f"ffn_{i}_w2"]["kernel"] + enc[f"ffn_{i}_w2"]["bias"]
    x = np_affine_ln(h + f, enc[f"ffn_norm_{i}"]) * mask
  return x


def test_post_ln_sasrec_model_matches_numpy_padded_and_packed():
  """model.sasrec_block='post_ln' (RecBole's SASRec, np_post_ln_sasrec), cosine output."""
  model, padded, packed = small_sasrec(12, sasrec_block="post_ln")
  for batch in (padded, packed):
    jb = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    params = perturb(model.init({"params": jax.random.key(0)}, jb)["params"], 13, 0.4)
    got = np.asarray(model.apply({"params": params}, jb, deterministic=True))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    for r in range(batch["ids"].shape[0]):
      seg = batch["seg"][r]
      x = np_post_ln_sasrec(p, batch["ids"][r], batch["pos"][r], seg, 2, 2)
      norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
      np.testing.assert_allclose(got[r], x / norm * (seg != 0)[:, None], rtol=1e-4, atol=2e-5)


def test_post_ln_dot_score_is_the_last_block_output_without_another_norm():
  """S3-Rec / RecBole score the post-LN encoder's output directly: with model.score='dot' there is
  no final layer norm (no out_norm params) and u equals the last block's LN output."""
  model, padded, _ = small_sasrec(14, sasrec_block="post_ln", score="dot", num_blocks=1)
  jb = {k: jnp.asarray(v, jnp.int32) for k, v in padded.items()}
  params = perturb(model.init({"params": jax.random.key(0)}, jb)["params"], 15, 0.4)
  assert "out_norm" not in params
  got = np.asarray(model.apply({"params": params}, jb, deterministic=True))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  for r in range(padded["ids"].shape[0]):
    want = np_post_ln_sasrec(p, padded["ids"][r], padded["pos"][r], padded["seg"][r], 1, 2)
    np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=2e-5)


def test_post_ln_init_is_normal_002_with_zero_biases():
  cfg = get_config()
  cfg.model.name = "sasrec"
  cfg.model.sasrec_block = "post_ln"
  cfg.data.max_seq_len = 50
  cfg.model.embed_dim = 64
  cfg.model.num_heads = 2
  cfg.model.ffn_hidden_dim = 256
  model = build_model(cfg, 3000)
  dummy = {k: jnp.zeros((1, 50), jnp.int32) for k in ("ids", "pos", "seg", "ts_query", "ts_key")}
  params = model.init({"params": jax.random.key(1)}, dummy)["params"]
  enc = params["encoder"]
  # Untruncated N(0, 0.02²) everywhere, the item table too (truncating at ±2σ gives std 0.0176).
  for w in (enc["attn_0"]["in_proj"], enc["ffn_1_w1"]["kernel"], params["pos_emb"], params["item_emb"]):
    assert abs(float(jnp.std(w)) - 0.02) < 0.001
  assert float(jnp.abs(enc["ffn_0_w2"]["bias"]).max()) == 0.0 and float(jnp.abs(enc["attn_1"]["in_proj_bias"]).max()) == 0.0


def test_unknown_sasrec_block_is_a_config_error():
  import pytest

  from genrec_jax.config import ConfigError

  cfg = get_config()
  cfg.model.name = "sasrec"
  cfg.model.sasrec_block = "mid_ln"
  with pytest.raises(ConfigError, match="unknown model.sasrec_block 'mid_ln'"):
    build_model(cfg, 10)
