"""Scoring tokens against a whole item catalog without materialising the [tokens, catalog] logits.

A loss over the catalog needs s = U Eᵀ ([M, C]: every token's score for every item). Written
directly, XLA:CPU writes s (M·C floats, 240 MB for 16k tokens × 3.7k items) to memory and
reads it back several times in the forward and backward passes; the matmuls themselves are
small (inner dimension D ≈ 50). Here the tokens are processed in chunks of ≈ `chunk` rows: each
chunk's scores are formed, used and dropped while they are in cache.

  catalog_logsumexp_sum(U, E, w) = Σ_m w[m] log Σ_c exp(U[m] · E[c])        (full softmax)
      ∂/∂U[m] = w[m] Σ_c p[m, c] E[c],   ∂/∂E[c] = Σ_m w[m] p[m, c] U[m]   (p = softmax(s))
      A scalar, so its gradient is formed in the same pass as its value (one exp per score).
      Scores are shifted by a Cauchy-Schwarz bound instead of the row max when that is safe.
  catalog_take(U, E, K)[m, k] = U[m] · E[K[m, k]]                          ('dense' sampled softmax)
      ∂/∂U[m] = Σ_k g[m, k] E[K[m, k]],  ∂/∂E[c] = Σ_{(m,k): K[m,k]=c} g[m, k] U[m]
      The backward scatters g into a dense [chunk, C] tile and does two matmuls.
  catalog_gather_dot(U, E, K)[m, k] = U[m] · E[K[m, k]]                    ('gather' sampled scores)
      The same numbers by gathering the K rows, ~64 tokens at a time so the gathered rows stay
      in cache (all at once they are B·N·K·D floats, hundreds of MB).
  gathered_logsumexp_sum(U, E, K, ok, a, w) = Σ_m w[m] log(e^{a[m]} + Σ_{k: ok[m,k]} e^{U[m] · E[K[m, k]]})
      The sampled softmax's log-sum-exp term ('gather' loss): a scalar, so like
      catalog_logsumexp_sum its gradient is formed in the same pass, and each chunk's K rows
      are gathered once instead of once forward and once backward.

All zero-pad D to a multiple of 16 floats (the same dot products; XLA:CPU's matmul kernels run
~1.3-1.6x faster on 64 columns than on 50) and M to a whole number of chunks (padded rows get
zero gradient). Scores are accumulated in float32 whatever the input dtype. Chunk i holds tokens
i, n + i, 2n + i, ... (`_to_chunks`), so a batch split over devices stays split inside each chunk;
the log-sum-exp instead moves weight-0 tokens last and skips their chunks (`_weighted_first`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
CHUNK = 1024  # tokens per chunk (about): a [1024, C] float32 score tile is 15 MB for C = 3.7k


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _pad_to(x: Array, axis: int, multiple: int) -> Array:
  size = x.shape[axis]
  extra = -size % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def _scores(u_TxP: Array, e_CxP: Array) -> Array:
  return jnp.einsum("tp,cp->tc", u_TxP, e_CxP, preferred_element_type=jnp.float32)


def _layout(m: int, chunk: int) -> tuple[int, int]:
  """(number of chunks n, rows per chunk r) with n·r >= m, r ≈ chunk and a multiple of 8."""
  n = max(1, _ceil_div(m, chunk))
  return n, _ceil_div(_ceil_div(m, n), 8) * 8


def _to_chunks(x_Mx: Array, n: int, r: int) -> Array:
  """[M, ...] -> [n, r, ...], chunk i holding tokens i, n + i, 2n + i, ... (zero rows padded).

  Strided, not contiguous: a token-sharded (data-parallel) input stays sharded along each
  chunk's rows, so every device scans its own tokens with no resharding collective."""
  x = _pad_to(x_Mx, 0, n * r)
  return jnp.swapaxes(x.reshape(r, n, *x.shape[1:]), 0, 1)


def _from_chunks(x_NxRx: Array, m: int) -> Array:
  """The inverse of `_to_chunks`: [n, r, ...] -> [m, ...]."""
  x = jnp.swapaxes(x_NxRx, 0, 1)
  return x.reshape(-1, *x.shape[2:])[:m]


def _prepare(user_MxD: Array, items_CxD: Array, chunk: int) -> tuple[Array, Array]:
  """Zero-padded copies: users [n, r, P] (`_to_chunks`), items [C, P], P = D rounded up to 16."""
  n, r = _layout(user_MxD.shape[0], chunk)
  return _to_chunks(_pad_to(user_MxD, 1, 16), n, r), _pad_to(items_CxD, 1, 16)


def _chunk_grads(
    u_NxTxP: Array, e_CxP: Array, dscore_fn, active: Array | None = None
) -> tuple[Array, Array, Array]:
  """For each chunk i: (G, a, x) = dscore_fn(i, U_i), the chunk's score gradient being diag(a) G
  (a = None: G itself); dU_i = diag(a) G E, dE += Gᵀ diag(a) U_i. Returns (dU [n, r, P],
  Σ_i dE_i [C, P], Σ_i x_i).

  dE is accumulated transposed, dEᵀ += (diag(a) U_i)ᵀ G: XLA:CPU runs that product about twice as
  fast as Gᵀ (diag(a) U_i), which contracts G over its rows (measured on [1000, 3883] chunks). It
  is a float32 accumulator carried through the loop, created from the table so that under
  shard_map it is per-device like the table (every device's loop stays local: no per-chunk
  collective). active: chunks i >= active are skipped (G = 0)."""

  def compute(carry, i, u_TxP):
    det_PxC, total = carry
    g_TxC, a_T, aux = dscore_fn(i, u_TxP)
    g_TxC = g_TxC.astype(u_TxP.dtype)
    du_TxP = jnp.einsum("tc,cp->tp", g_TxC, e_CxP, preferred_element_type=jnp.float32)
    au_TxP = u_TxP
    if a_T is not None:
      au_TxP = (u_TxP * a_T[:, None]).astype(u_TxP.dtype)
      du_TxP = du_TxP * a_T[:, None]
    det_PxC = det_PxC + jnp.einsum("pt,tc->pc", au_TxP.T, g_TxC, preferred_element_type=jnp.float32)
    return (det_PxC, total + aux), du_TxP

  def one(carry, xs):
    i, u_TxP = xs
    if active is None:
      return compute(carry, i, u_TxP)
    skip = lambda carry, i, u_TxP: (carry, jnp.zeros_like(u_TxP, dtype=jnp.float32))
    return jax.lax.cond(i < active, compute, skip, carry, i, u_TxP)

  zero_PxC = jnp.zeros_like(e_CxP.T, dtype=jnp.float32)
  carry0 = (zero_PxC, jnp.sum(zero_PxC[:1, 0]))  # a float32 zero typed like the table
  (det_PxC, total), du_NxTxP = jax.lax.scan(one, carry0, (jnp.arange(u_NxTxP.shape[0]), u_NxTxP))
  return du_NxTxP, det_PxC.T, total


def _weighted_first(user_MxD: Array, weights_M: Array, chunk: int):
  """The rows with non-zero weight moved to the front, cut into contiguous chunks.

  Returns (users [n, r, D], weights [n, r], order [M], active): row j of the flattened chunks is
  token order[j]; chunks >= active hold only zero-weight rows (padding, unsupervised positions),
  whose scores need not be formed. Contiguous rather than strided (`_to_chunks`): inside
  data_parallel_loss (sharded.py) each device reorders only its own tokens."""
  m = user_MxD.shape[0]
  n, r = _layout(m, chunk)
  order_M = jnp.argsort(weights_M == 0, stable=True)
  u_NxTxD = _pad_to(user_MxD[order_M], 0, n * r).reshape(n, r, -1)
  w_NxT = _pad_to(weights_M.astype(jnp.float32)[order_M], 0, n * r).reshape(n, r)
  active = _ceil_div(jnp.sum(weights_M != 0), r)
  return u_NxTxD, w_NxT, order_M, active


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def catalog_logsumexp_sum(user_MxD: Array, items_CxD: Array, weights_M: Array, chunk: int = CHUNK) -> Array:
  """Σ_m w[m] · log Σ_c exp(<user[m], items[c]>), a float32 scalar (w: per-token loss weights).

  A scalar, so the gradient can be formed in the same pass as the value: each chunk's scores are
  exponentiated once, for the log-sum-exp and for p = softmax (3 matmuls and one exp per score,
  instead of the 4 and 2 of a forward pass followed by a recomputing backward pass). Tokens of
  weight 0 are moved behind the others and their chunks skipped (`_weighted_first`).
  """
  u_NxTxD, w_NxT, _, active = _weighted_first(user_MxD, weights_M, chunk)
  u_NxTxP, e_CxP = _pad_to(u_NxTxD, 2, 16), _pad_to(items_CxD, 1, 16)

  def one(xs):
    i, u_TxP, w_T = xs
    value = lambda: jnp.sum(jax.nn.logsumexp(_scores(u_TxP, e_CxP), axis=-1) * w_T)
    return jax.lax.cond(i < active, value, lambda: jnp.sum(w_T) * 0.0)

  return jnp.sum(jax.lax.map(one, (jnp.arange(u_NxTxP.shape[0]), u_NxTxP, w_NxT)))


SHIFT_BOUND = 40.0  # see _lse_fwd: exp(s - c) >= exp(-2c) stays a normal float32 for c <= 43


def _lse_fwd(user_MxD, items_CxD, weights_M, chunk):
  m, d = user_MxD.shape
  u_NxTxD, w_NxT, order_M, active = _weighted_first(user_MxD, weights_M, chunk)
  u_NxTxP, e_CxP = _pad_to(u_NxTxD, 2, 16), _pad_to(items_CxD, 1, 16)
  e_norm_max = jnp.sqrt(jnp.max(jnp.sum(jnp.square(e_CxP.astype(jnp.float32)), axis=-1)))

  def dscore(i, u_TxP):
    # ∂(Σ w · lse)/∂s = w · softmax(s) = diag(w / z) e, with e = exp(s - c) and z = Σ_c e.
    # The shift c only has to keep exp in range. The row max costs a pass over the [T, C] scores;
    # instead c[t] = ‖u_t‖ max_c ‖e_c‖ >= s[t, c] (Cauchy-Schwarz) while that bound is small
    # enough (cosine scores / τ: c = 1/τ = 20) that even e^{s - c} >= e^{-2c} is a normal float.
    s_TxC = _scores(u_TxP, e_CxP)
    bound_T = jnp.sqrt(jnp.sum(jnp.square(u_TxP.astype(jnp.float32)), axis=-1)) * e_norm_max
    c_T = jax.lax.cond(jnp.max(bound_T) <= SHIFT_BOUND, lambda: bound_T, lambda: jnp.max(s_TxC, axis=-1))
    e_TxC = jnp.exp(s_TxC - c_T[:, None])
    z_T = jnp.sum(e_TxC, axis=-1)
    lse_T = c_T + jnp.log(z_T)
    return e_TxC, w_NxT[i] / z_T, jnp.sum(lse_T * w_NxT[i])

  du_NxTxP, de_CxP, total = _chunk_grads(u_NxTxP, e_CxP, dscore, active)
  du_sorted_MxD = du_NxTxP.reshape(-1, du_NxTxP.shape[-1])[:m, :d]
  du_MxD = du_sorted_MxD[jnp.argsort(order_M)]  # back to the tokens' own order
  # d/dw[m] = lse[m]: not needed by the losses (weights are constants), so w gets no gradient.
  return total, (du_MxD.astype(user_MxD.dtype), de_CxP[:, :d].astype(items_CxD.dtype), weights_M)


def _lse_bwd(chunk, res, g):
  du_MxD, de_CxD, weights_M = res
  return (g * du_MxD).astype(du_MxD.dtype), (g * de_CxD).astype(de_CxD.dtype), jnp.zeros_like(weights_M)


catalog_logsumexp_sum.defvjp(_lse_fwd, _lse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def catalog_take(user_MxD: Array, items_CxD: Array, cols_MxK: Array, chunk: int = CHUNK) -> Array:
  """out[m, k] = <user[m], items[cols[m, k]]>, float32 [M, K] (cols: int rows of `items`)."""
  return _take_fwd(user_MxD, items_CxD, cols_MxK, chunk)[0]


def _sampled_scores_fwd(user_MxD, items_CxD, cols_MxK, chunk, score_fn):
  """out [M, K] = score_fn(U_i, E, cols_i) chunk by chunk, and the residuals of both VJPs."""
  m = user_MxD.shape[0]
  u_NxTxP, e_CxP = _prepare(user_MxD, items_CxD, chunk)
  cols_NxTxK = _to_chunks(cols_MxK, *u_NxTxP.shape[:2])
  out_NxTxK = jax.lax.map(lambda xs: score_fn(xs[0], e_CxP, xs[1]), (u_NxTxP, cols_NxTxK))
  return _from_chunks(out_NxTxK, m), (user_MxD, items_CxD, cols_NxTxK)


def _take_fwd(user_MxD, items_CxD, cols_MxK, chunk):
  return _sampled_scores_fwd(
      user_MxD, items_CxD, cols_MxK, chunk,
      lambda u_TxP, e_CxP, cols_TxK: jnp.take_along_axis(_scores(u_TxP, e_CxP), cols_TxK, axis=-1),
  )


def _take_bwd(chunk, res, g_MxK):
  user_MxD, items_CxD, cols_NxTxK = res
  m, d = user_MxD.shape
  c = items_CxD.shape[0]
  u_NxTxP, e_CxP = _prepare(user_MxD, items_CxD, chunk)
  g_NxTxK = _to_chunks(g_MxK.astype(jnp.float32), *cols_NxTxK.shape[:2])
  r = cols_NxTxK.shape[1]
  rows_TxK = jnp.broadcast_to(jnp.arange(r)[:, None], cols_NxTxK.shape[1:])

  def dscore(i, u_TxP):  # the dense [chunk, C] gradient: g scattered to its columns (repeats add)
    del u_TxP
    g_TxC = jnp.zeros((r, c), jnp.float32).at[rows_TxK, cols_NxTxK[i]].add(g_NxTxK[i])
    return g_TxC, None, 0.0

  du_NxTxP, de_CxP, _ = _chunk_grads(u_NxTxP, e_CxP, dscore)
  du_MxD = _from_chunks(du_NxTxP, m)[:, :d].astype(user_MxD.dtype)
  return du_MxD, de_CxP[:, :d].astype(items_CxD.dtype), None


catalog_take.defvjp(_take_fwd, _take_bwd)


GATHER_ROWS = 8192  # gathered item rows per chunk of catalog_gather_dot: 2 MB at 64 floats


def gather_chunk(num_sampled: int) -> int:
  """Tokens per chunk of `catalog_gather_dot` for K sampled items per token (≈ GATHER_ROWS rows)."""
  return max(8, GATHER_ROWS // max(1, num_sampled))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def catalog_gather_dot(user_MxD: Array, items_CxD: Array, ids_MxK: Array, chunk: int) -> Array:
  """out[m, k] = <user[m], items[ids[m, k]]>, float32 [M, K], `chunk` tokens at a time.

  The same numbers as gathering all M·K rows at once (`items[ids]`, the reference's way), but each
  chunk's [chunk, K, P] rows are gathered, used and dropped while they are in cache; written at
  once they are M·K·D floats (400 MB for 16k tokens × 128 negatives), and on XLA:CPU writing and
  re-reading that array costs ~3x the arithmetic. The backward pass gathers each chunk's rows
  again:  ∂/∂user[m] = Σ_k g[m, k] items[ids[m, k]],  ∂/∂items[c] = Σ_{ids[m,k]=c} g[m, k] user[m]
  (a scatter-add into a float32 [C, P] accumulator carried through the loop).
  """
  return _gather_fwd(user_MxD, items_CxD, ids_MxK, chunk)[0]


def _gather_fwd(user_MxD, items_CxD, ids_MxK, chunk):
  return _sampled_scores_fwd(
      user_MxD, items_CxD, ids_MxK, chunk,
      lambda u_TxP, e_CxP, ids_TxK: jnp.einsum(
          "tp,tkp->tk", u_TxP, e_CxP[ids_TxK], preferred_element_type=jnp.float32),
  )


def _gather_bwd(chunk, res, g_MxK):
  user_MxD, items_CxD, ids_NxTxK = res
  m, d = user_MxD.shape
  u_NxTxP, e_CxP = _prepare(user_MxD, items_CxD, chunk)
  g_NxTxK = _to_chunks(g_MxK, *ids_NxTxK.shape[:2]).astype(u_NxTxP.dtype)

  def one(de_CxP, xs):
    u_TxP, ids_TxK, g_TxK = xs
    return _gathered_rows_grads(de_CxP, u_TxP, e_CxP[ids_TxK], ids_TxK, g_TxK)

  # The accumulator starts as zeros shaped (and, under shard_map, typed) like the table.
  de0_CxP = jnp.zeros_like(e_CxP, dtype=jnp.float32)
  de_CxP, du_NxTxP = jax.lax.scan(one, de0_CxP, (u_NxTxP, ids_NxTxK, g_NxTxK))
  du_MxD = _from_chunks(du_NxTxP, m)[:, :d].astype(user_MxD.dtype)
  return du_MxD, de_CxP[:, :d].astype(items_CxD.dtype), None


catalog_gather_dot.defvjp(_gather_fwd, _gather_bwd)


def _gathered_rows_grads(de_VxP, u_TxP, rows_TxKxP, ids_TxK, g_TxK):
  """For a chunk's scores s[t, k] = <u[t], rows[t, k]> (rows[t, k] = E[ids[t, k]]) and their
  gradient g: returns (dE + Σ_{ids[t,k]=c} g[t, k] u[t] scattered into the float32 accumulator,
  dU[t] = Σ_k g[t, k] rows[t, k] in float32)."""
  du_TxP = jnp.einsum("tk,tkp->tp", g_TxK.astype(rows_TxKxP.dtype), rows_TxKxP,
                      preferred_element_type=jnp.float32)
  rows_TKxP = g_TxK.astype(jnp.float32)[..., None] * u_TxP.astype(jnp.float32)[:, None, :]
  de_VxP = de_VxP.at[ids_TxK.reshape(-1)].add(rows_TKxP.reshape(-1, rows_TKxP.shape[-1]))
  return de_VxP, du_TxP


MASKED_LOGIT = -5e4  # the logit of a masked negative (the reference's value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def gathered_logsumexp_sum(
    user_MxD: Array, items_VxD: Array, ids_MxK: Array, valid_MxK: Array, pos_M: Array,
    weights_M: Array, chunk: int,
) -> Array:
  """Σ_m w[m] · logsumexp([pos[m], s[m, 0..K-1]]), s[m, k] = <user[m], items[ids[m, k]]> where
  valid[m, k], else MASKED_LOGIT; a float32 scalar, `chunk` tokens at a time.

  With p = softmax([pos, s]) per token:
    ∂/∂pos[m] = w[m] p[m, 0],   ∂/∂user[m] = w[m] Σ_k p[m, k] items[ids[m, k]],
    ∂/∂items[c] = Σ_{ids[m, k] = c} w[m] p[m, k] user[m].
  All three are formed in the value's own pass (the rows are gathered once per chunk), so the
  backward pass only scales them. ids and valid get no gradient, nor does w (a constant weight).
  """
  return _gathered_lse_fwd(user_MxD, items_VxD, ids_MxK, valid_MxK, pos_M, weights_M, chunk)[0]


def _gathered_lse_fwd(user_MxD, items_VxD, ids_MxK, valid_MxK, pos_M, weights_M, chunk):
  m, d = user_MxD.shape
  u_NxTxP, e_VxP = _prepare(user_MxD, items_VxD, chunk)
  n, r = u_NxTxP.shape[:2]
  # Padded rows get weight 0 (and id 0, masked): they add nothing to the value or the gradients.
  ids_NxTxK, valid_NxTxK, pos_NxT, w_NxT = (
      _to_chunks(x, n, r) for x in (ids_MxK, valid_MxK, pos_M.astype(jnp.float32),
                                    weights_M.astype(jnp.float32)))

  def one(carry, xs):
    de_VxP, total = carry
    u_TxP, ids_TxK, valid_TxK, pos_T, w_T = xs
    rows_TxKxP = e_VxP[ids_TxK]
    s_TxK = jnp.einsum("tp,tkp->tk", u_TxP, rows_TxKxP, preferred_element_type=jnp.float32)
    s_TxK = jnp.where(valid_TxK, s_TxK, MASKED_LOGIT)
    top_T = jnp.maximum(pos_T, jnp.max(s_TxK, axis=-1))
    lse_T = top_T + jnp.log(jnp.exp(pos_T - top_T) + jnp.sum(jnp.exp(s_TxK - top_T[:, None]), axis=-1))
    g_TxK = jnp.exp(s_TxK - lse_T[:, None]) * w_T[:, None]  # w · p over the negatives
    dpos_T = jnp.exp(pos_T - lse_T) * w_T
    de_VxP, du_TxP = _gathered_rows_grads(de_VxP, u_TxP, rows_TxKxP, ids_TxK, g_TxK)
    return (de_VxP, total + jnp.sum(lse_T * w_T)), (du_TxP, dpos_T)

  de0_VxP = jnp.zeros_like(e_VxP, dtype=jnp.float32)  # typed like the table (see _chunk_grads)
  carry0 = (de0_VxP, jnp.sum(de0_VxP[0, :1]))
  (de_VxP, total), (du_NxTxP, dpos_NxT) = jax.lax.scan(
      one, carry0, (u_NxTxP, ids_NxTxK, valid_NxTxK, pos_NxT, w_NxT))
  du_MxD = _from_chunks(du_NxTxP, m)[:, :d].astype(user_MxD.dtype)
  dpos_M = _from_chunks(dpos_NxT, m).astype(pos_M.dtype)
  return total, (du_MxD, de_VxP[:, :d].astype(items_VxD.dtype), dpos_M, weights_M)


def _gathered_lse_bwd(chunk, res, g):
  du_MxD, de_VxD, dpos_M, weights_M = res
  return ((g * du_MxD).astype(du_MxD.dtype), (g * de_VxD).astype(de_VxD.dtype), None, None,
          (g * dpos_M).astype(dpos_M.dtype), jnp.zeros_like(weights_M))


gathered_logsumexp_sum.defvjp(_gathered_lse_fwd, _gathered_lse_bwd)
