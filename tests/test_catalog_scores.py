"""catalog_scores: chunked catalog log-sum-exp and sampled scores vs a naive NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.catalog_scores import (
    MASKED_LOGIT, SHIFT_BOUND, catalog_gather_dot, catalog_logsumexp_sum, catalog_take, gathered_logsumexp_sum,
)


def _data(m, d, c, k, seed=0):
  r = np.random.default_rng(seed)
  return (r.standard_normal((m, d)).astype(np.float32), r.standard_normal((c, d)).astype(np.float32),
          r.random(m).astype(np.float32), r.integers(0, c, (m, k)).astype(np.int32),
          r.standard_normal((m, k)).astype(np.float32))


def _np_lse_sum_and_grads(u, e, w):
  """Σ_m w_m log Σ_c exp(u_m·e_c) and its gradients, in float64 NumPy."""
  u, e, w = (x.astype(np.float64) for x in (u, e, w))
  s = u @ e.T
  mx = s.max(axis=1, keepdims=True)
  lse = mx[:, 0] + np.log(np.exp(s - mx).sum(axis=1))
  p = np.exp(s - lse[:, None]) * w[:, None]
  return float(np.sum(w * lse)), p @ e, p.T @ u


def _np_take_and_grads(u, e, cols, g):
  """out[m, k] = u_m·e_{cols[m,k]}, and the gradients of Σ g ⊙ out, in float64 NumPy."""
  u, e, g = (x.astype(np.float64) for x in (u, e, g))
  out = np.einsum("md,mkd->mk", u, e[cols])
  du = np.einsum("mk,mkd->md", g, e[cols])
  de = np.zeros_like(e)
  np.add.at(de, cols.reshape(-1), (g[..., None] * u[:, None, :]).reshape(-1, u.shape[1]))
  return out, du, de


# (tokens, dim, catalog, K, chunk): a ragged last chunk, a chunk larger than the tokens, D not a
# multiple of 16, several chunks.
SHAPES = [(1000, 50, 300, 7, 64), (37, 5, 11, 3, 8), (200, 64, 50, 5, 1024), (513, 20, 97, 4, 128)]


@pytest.mark.parametrize("m, d, c, k, chunk", SHAPES)
def test_logsumexp_sum_value_and_gradients_match_numpy(m, d, c, k, chunk):
  u, e, w, _, _ = _data(m, d, c, k)
  value, (du, de) = jax.jit(jax.value_and_grad(lambda u, e: catalog_logsumexp_sum(u, e, jnp.asarray(w), chunk),
                                               argnums=(0, 1)))(u, e)
  ref, ref_du, ref_de = _np_lse_sum_and_grads(u, e, w)
  np.testing.assert_allclose(float(value), ref, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * np.abs(ref_du).max())
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * np.abs(ref_de).max())
  # the primal (no gradient) path gives the same value
  np.testing.assert_allclose(float(jax.jit(catalog_logsumexp_sum, static_argnums=3)(u, e, w, chunk)), ref, rtol=2e-6)


@pytest.mark.parametrize("m, d, c, k, chunk", SHAPES)
def test_take_value_and_gradients_match_numpy(m, d, c, k, chunk):
  u, e, _, cols, g = _data(m, d, c, k, seed=1)
  cols[0, :] = cols[0, 0]  # repeated columns in one row: their gradients add up
  f = jax.jit(lambda u, e: jnp.sum(catalog_take(u, e, jnp.asarray(cols), chunk) * g))
  out = jax.jit(catalog_take, static_argnums=3)(u, e, cols, chunk)
  du, de = jax.grad(f, argnums=(0, 1))(u, e)
  ref, ref_du, ref_de = _np_take_and_grads(u, e, cols, g)
  assert out.shape == (m, k) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * np.abs(ref_du).max())
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * np.abs(ref_de).max())


@pytest.mark.parametrize("zero_frac", [0.7, 1.0])
def test_logsumexp_sum_skips_zero_weight_rows_exactly(zero_frac):
  """Zero-weight rows (padding) scattered through the batch: moved behind the others and their
  chunks skipped; value and gradients still equal NumPy, zero-weight rows get zero gradient."""
  u, e, w, _, _ = _data(1000, 50, 300, 1, seed=3)
  w[np.random.default_rng(5).random(1000) < zero_frac] = 0.0
  f = jax.jit(jax.value_and_grad(lambda u, e: catalog_logsumexp_sum(u, e, jnp.asarray(w), 64), argnums=(0, 1)))
  value, (du, de) = f(u, e)
  ref, ref_du, ref_de = _np_lse_sum_and_grads(u, e, w)
  np.testing.assert_allclose(float(value), ref, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * max(np.abs(ref_du).max(), 1))
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * max(np.abs(ref_de).max(), 1))
  assert not np.any(np.asarray(du)[w == 0])
  np.testing.assert_allclose(float(jax.jit(catalog_logsumexp_sum, static_argnums=3)(u, e, w, 64)), ref,
                             rtol=2e-6, atol=1e-6)


def test_logsumexp_sum_shift_by_norm_bound_or_row_max():
  """The gradient pass shifts the scores by c = ‖u‖ max‖e‖ when c <= SHIFT_BOUND, else by the row
  max. Chunks of cosine / τ rows (c = 20), of large rows (c = 100: the bound would underflow every
  exp), and of rows at the bound scoring -c against every item (each exp is e^{-2c}) all equal NumPy."""
  rng = np.random.default_rng(11)
  e = rng.standard_normal((300, 50))
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  e[:100] = e[0]  # a third of the catalog shares one direction
  u = rng.standard_normal((192, 50))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  u[:64] *= 20.0  # cosine / 0.05
  u[64:128] *= 100.0
  u[128:] = -SHIFT_BOUND * e[0]  # s = -c for the first 100 items
  e[100:] = e[0] * (1 - 1e-3 * rng.random((200, 1)))  # and just above -c for the rest
  u, e = u.astype(np.float32), e.astype(np.float32)
  w = rng.random(192).astype(np.float32)
  value, (du, de) = jax.jit(jax.value_and_grad(lambda u, e: catalog_logsumexp_sum(u, e, jnp.asarray(w), 64),
                                               argnums=(0, 1)))(u, e)
  ref, ref_du, ref_de = _np_lse_sum_and_grads(u, e, w)
  np.testing.assert_allclose(float(value), ref, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * np.abs(ref_du).max())
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * np.abs(ref_de).max())


@pytest.mark.parametrize("m, d, c, k, chunk", SHAPES)
def test_gather_dot_value_and_gradients_match_numpy(m, d, c, k, chunk):
  u, e, _, ids, g = _data(m, d, c, k, seed=6)
  ids[0, :] = ids[0, 0]  # an item sampled several times for one token: its gradients add up
  ids[:, 0] = ids[0, 0]  # and by many tokens
  out = jax.jit(catalog_gather_dot, static_argnums=3)(u, e, ids, chunk)
  du, de = jax.jit(jax.grad(lambda u, e: jnp.sum(catalog_gather_dot(u, e, jnp.asarray(ids), chunk) * g),
                            argnums=(0, 1)))(u, e)
  ref, ref_du, ref_de = _np_take_and_grads(u, e, ids, g)
  assert out.shape == (m, k) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * np.abs(ref_du).max())
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * np.abs(ref_de).max())


def _np_gathered_lse_and_grads(u, e, ids, valid, pos, w):
  """Σ_m w_m logsumexp([pos_m, s_m]) with s_mk = u_m·e_{ids[m,k]} (MASKED_LOGIT where not valid),
  and its gradients for u, e and pos, in float64 NumPy."""
  u, e, pos, w = (x.astype(np.float64) for x in (u, e, pos, w))
  s = np.where(valid, np.einsum("md,mkd->mk", u, e[ids]), MASKED_LOGIT)
  logits = np.concatenate([pos[:, None], s], axis=1)
  mx = logits.max(axis=1, keepdims=True)
  lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
  p = np.exp(logits - lse[:, None]) * w[:, None]
  du = np.einsum("mk,mkd->md", p[:, 1:], e[ids])
  de = np.zeros_like(e)
  np.add.at(de, ids.reshape(-1), (p[:, 1:, None] * u[:, None, :]).reshape(-1, u.shape[1]))
  return float(np.sum(w * lse)), du, de, p[:, 0]


@pytest.mark.parametrize("m, d, c, k, chunk", SHAPES)
def test_gathered_logsumexp_sum_value_and_gradients_match_numpy(m, d, c, k, chunk):
  u, e, w, ids, _ = _data(m, d, c, k, seed=7)
  r = np.random.default_rng(8)
  pos = r.standard_normal(m).astype(np.float32)
  valid = r.random((m, k)) < 0.8
  valid[1, :] = False  # a token whose negatives are all masked
  w[r.random(m) < 0.2] = 0.0  # unsupervised tokens
  ids[0, :] = ids[0, 0]  # one item sampled several times by one token and by many tokens
  ids[:, 0] = ids[0, 0]

  def f(u, e, pos):
    return gathered_logsumexp_sum(u, e, jnp.asarray(ids), jnp.asarray(valid), pos, jnp.asarray(w), chunk)

  value, (du, de, dpos) = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(u, e, pos)
  ref, ref_du, ref_de, ref_dpos = _np_gathered_lse_and_grads(u, e, ids, valid, pos, w)
  np.testing.assert_allclose(float(value), ref, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(du), ref_du, rtol=1e-4, atol=1e-5 * np.abs(ref_du).max())
  np.testing.assert_allclose(np.asarray(de), ref_de, rtol=1e-4, atol=1e-5 * np.abs(ref_de).max())
  np.testing.assert_allclose(np.asarray(dpos), ref_dpos, rtol=1e-5, atol=1e-7)
  assert not np.any(np.asarray(du)[w == 0]) and not np.any(np.asarray(dpos)[w == 0])
  np.testing.assert_allclose(float(jax.jit(f)(u, e, pos)), ref, rtol=2e-6)  # the primal path


def test_bfloat16_inputs_accumulate_in_float32():
  u, e, w, cols, _ = _data(300, 50, 40, 6, seed=2)
  ub, eb = jnp.asarray(u, jnp.bfloat16), jnp.asarray(e, jnp.bfloat16)
  out = catalog_take(ub, eb, jnp.asarray(cols), 64)
  assert out.dtype == jnp.float32
  # exact products of the bf16-rounded inputs, summed in float32
  ref, _, _ = _np_take_and_grads(np.asarray(ub, np.float32), np.asarray(eb, np.float32), cols, np.ones((300, 6)))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(catalog_gather_dot(ub, eb, jnp.asarray(cols), 64)), ref, rtol=1e-5, atol=1e-4)
  du, de = jax.grad(lambda u, e: catalog_logsumexp_sum(u, e, jnp.asarray(w), 64), argnums=(0, 1))(ub, eb)
  assert du.dtype == jnp.bfloat16 and de.dtype == jnp.bfloat16
  du, de = jax.grad(lambda u, e: jnp.sum(catalog_gather_dot(u, e, jnp.asarray(cols), 64)), argnums=(0, 1))(ub, eb)
  assert du.dtype == jnp.bfloat16 and de.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["full_softmax", "sampled_dense", "sampled_gather"])
def test_losses_chunked_equal_plain_program(name):
  """losses.* with chunk=64 (catalog_scores) equal chunk=0 (all [B, N, C] logits at once),
  values and gradients, on a batch with padding positions and negatives hitting the target."""
  from genrec_jax import losses

  r = np.random.default_rng(4)
  b, n, d, v, k = 6, 17, 12, 40, 9
  user = jnp.asarray(r.standard_normal((b, n, d)), jnp.float32)
  table = jnp.asarray(r.standard_normal((v, d)), jnp.float32)
  targets = jnp.asarray(r.integers(1, v, (b, n)) * (r.random((b, n)) < 0.8), jnp.int32)
  catalog = jnp.arange(1, v, dtype=jnp.int32)
  offs = jnp.asarray(r.integers(0, v - 1, (b, n, k)), jnp.int32)

  def loss(u, t, chunk):
    if name == "full_softmax":
      return losses.full_softmax_loss(u, targets, t, catalog, 0.5, chunk)
    impl = "dense" if name == "sampled_dense" else "gather"
    return losses.sampled_softmax_loss(u, targets, t, catalog, offs, 0.5, impl=impl, chunk=chunk)

  plain = jax.value_and_grad(loss, argnums=(0, 1))(user, table, 0)
  chunked = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(user, table, 64)
  np.testing.assert_allclose(float(chunked[0]), float(plain[0]), rtol=1e-6)
  for a, c in zip(plain[1], chunked[1]):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_negative_loss_chunk_is_a_config_error(ml100k_config):
  from genrec_jax.config import ConfigError
  from genrec_jax.models.sequential import build_model
  from genrec_jax.train import trainer

  cfg = ml100k_config(**{"loss.name": "full_softmax", "loss.chunk": -1})  # ConfigDict keeps it an int
  with pytest.raises(ConfigError, match="loss.chunk"):
    trainer.make_loss_fn(build_model(cfg, 50), cfg, jnp.arange(1, 50))
