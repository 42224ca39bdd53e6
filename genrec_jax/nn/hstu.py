"""HSTU: Hierarchical Sequential Transduction Unit (Zhai et al., ICML 2024, arXiv 2402.17152).

Matches the public-dataset research path of Meta's generative-recommenders
(`SequentialTransductionUnitJagged` with `RelativeBucketedTimeAndPositionBasedBias`):

  U, V, Q, K = Split(SiLU(LayerNorm(X) W_uvqk))                  (no bias, SiLU on all four)
  A          = SiLU(Q Kᵀ + rab^{p,t}) / n ⊙ causal_mask         (no 1/√d, n = padded length)
  Y          = X + W_o Dropout(U ⊙ LayerNorm(A V)) + b_o        (no FFN)

LayerNorms have no affine parameters (eps 1e-6). rab is one bias shared by all heads: a learned
Toeplitz position bias plus a learned bias over log-bucketed time gaps.

Dense layout with segments: a row holds one or more users' sequences (segment ids, 0 = padding);
a query attends to keys j <= i of its own segment, so each user's outputs equal the reference's
jagged computation exactly, whether the row is padded or packed.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genrec_jax.nn.init import torch_linear_bias

Array = jax.Array


def layer_norm(x: Array, eps: float) -> Array:
  """LayerNorm over the last axis without learnable scale or shift."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def attention_mask(seg_BxN: Array) -> Array:
  """mask[b, i, j] = j <= i and seg[b, i] == seg[b, j] (causal within each sequence)."""
  n = seg_BxN.shape[1]
  causal_NxN = jnp.tril(jnp.ones((n, n), dtype=bool))
  return causal_NxN[None] & (seg_BxN[:, :, None] == seg_BxN[:, None, :])


def time_buckets(
    ts_query_BxN: Array, ts_key_BxN: Array, num_buckets: int = 128, bucket_size: float = 0.301
) -> Array:
  """bucket[b, i, j] = clamp(floor(ln(max(|tq[i] - tk[j]|, 1)) / 0.301), 0, num_buckets).

  tq[i] is the timestamp of the item that follows query position i (the target's timestamp for
  the last history position), tk[j] the key's own timestamp. Natural log divided by 0.301, as in
  the reference.
  """
  dt_BxNxN = ts_query_BxN.astype(jnp.int32)[:, :, None] - ts_key_BxN.astype(jnp.int32)[:, None, :]
  dt = jnp.maximum(jnp.abs(dt_BxNxN), 1).astype(jnp.float32)
  b = jnp.floor(jnp.log(dt) / bucket_size).astype(jnp.int32)
  return jnp.clip(b, 0, num_buckets)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_rows(x_NxM: Array, b: int) -> Array:
  """x repeated over a new leading axis of size b (jnp.broadcast_to), with a faster gradient.

  The gradient of a broadcast is a sum over the leading axis, which XLA:CPU reduces ~9x slower
  than the same sum written as a matmul with a ones vector (36x200x200: 9.6 ms vs 1.1 ms).
  """
  return jnp.broadcast_to(x_NxM[None], (b, *x_NxM.shape))


def _broadcast_rows_fwd(x_NxM, b):
  return broadcast_rows(x_NxM, b), None


def _broadcast_rows_bwd(b, _, g_BxNxM):
  ones_B = jnp.ones((b,), g_BxNxM.dtype)
  return ((ones_B @ g_BxNxM.reshape(b, -1)).reshape(g_BxNxM.shape[1:]),)


broadcast_rows.defvjp(_broadcast_rows_fwd, _broadcast_rows_bwd)


class RelativeBucketedTimeAndPositionBias(nn.Module):
  """rab^{p,t}[b, i, j] = w_pos[N - 1 + j - i] + w_time[bucket[b, i, j]]."""

  max_len: int
  num_buckets: int = 128
  use_time: bool = True

  @nn.compact
  def __call__(self, buckets_BxNxN: Array | None, batch_size: int = 1) -> Array:
    n = self.max_len
    init = nn.initializers.normal(stddev=0.02)
    pos_w = self.param("pos_w", init, (2 * n - 1,))
    i = jnp.arange(n)
    bias_BxNxN = broadcast_rows(pos_w[n - 1 + i[None, :] - i[:, None]], batch_size)
    if not self.use_time or buckets_BxNxN is None:
      return bias_BxNxN
    ts_w = self.param("ts_w", init, (self.num_buckets + 1,))
    return bias_BxNxN + ts_w[buckets_BxNxN]


class HSTULayer(nn.Module):
  """One HSTU block (pointwise aggregated attention + gating, residual)."""

  num_heads: int
  dqk: int
  dv: int
  dropout_rate: float
  attn_norm_len: int  # n in SiLU(.)/n: the reference's padded total length
  num_buckets: int = 128
  use_time_bias: bool = True
  eps: float = 1e-6

  @nn.compact
  def __call__(
      self, x_BxNxD: Array, buckets_BxNxN: Array | None, mask_BxNxN: Array, deterministic: bool
  ) -> Array:
    b, n, d = x_BxNxD.shape
    h, dqk, dv = self.num_heads, self.dqk, self.dv
    # U, V, Q, K = Split(φ1(f1(X))), f1 bias-free, φ1 = SiLU on the whole projection.
    w_uvqk = self.param("uvqk", nn.initializers.normal(0.02), (d, 2 * h * dv + 2 * h * dqk))
    uvqk_BxNxF = jax.nn.silu(layer_norm(x_BxNxD, self.eps) @ w_uvqk)
    u_BxNxHV, v_BxNxHV, q_BxNxHQ, k_BxNxHQ = jnp.split(
        uvqk_BxNxF, [h * dv, 2 * h * dv, 2 * h * dv + h * dqk], axis=-1
    )
    q_BxNxHxQ = q_BxNxHQ.reshape(b, n, h, dqk)
    k_BxNxHxQ = k_BxNxHQ.reshape(b, n, h, dqk)
    v_BxNxHxV = v_BxNxHV.reshape(b, n, h, dv)

    # A = φ2(QKᵀ + rab^{p,t}) / n, causal within the sequence; φ2 = SiLU.
    rab = RelativeBucketedTimeAndPositionBias(
        max_len=n, num_buckets=self.num_buckets, use_time=self.use_time_bias, name="rab"
    )(buckets_BxNxN, b)
    qk_BxHxNxN = jnp.einsum("bnhd,bmhd->bhnm", q_BxNxHxQ, k_BxNxHxQ) + rab[:, None]
    attn_BxHxNxN = jnp.where(
        mask_BxNxN[:, None], jax.nn.silu(qk_BxHxNxN) / self.attn_norm_len, 0.0
    )
    # Heads-major V so the [N, N] x [N, dv] products read A row-major (no transposed copy of A).
    av_BxHxNxV = jnp.einsum("bhnm,bhmd->bhnd", attn_BxHxNxN, v_BxNxHxV.transpose(0, 2, 1, 3))
    av_BxNxHV = av_BxHxNxV.transpose(0, 2, 1, 3).reshape(b, n, h * dv)

    # Y = f2(Dropout(U ⊙ Norm(AV))) + X.
    o_BxNxHV = u_BxNxHV * layer_norm(av_BxNxHV, self.eps)
    o_BxNxHV = nn.Dropout(self.dropout_rate)(o_BxNxHV, deterministic=deterministic)
    y_BxNxD = nn.Dense(
        d,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=torch_linear_bias(h * dv),
        name="o",
    )(o_BxNxHV)
    return y_BxNxD + x_BxNxD


class HSTUEncoder(nn.Module):
  """A stack of HSTU layers; time buckets are computed once and shared by the layers."""

  num_blocks: int
  num_heads: int
  dqk: int
  dv: int
  dropout_rate: float
  attn_norm_len: int
  num_buckets: int = 128
  use_time_bias: bool = True

  @nn.compact
  def __call__(
      self,
      x_BxNxD: Array,
      seg_BxN: Array,
      ts_query_BxN: Array | None,
      ts_key_BxN: Array | None,
      deterministic: bool,
  ) -> Array:
    mask_BxNxN = attention_mask(seg_BxN)
    buckets = None
    if self.use_time_bias and ts_query_BxN is not None:
      buckets = time_buckets(ts_query_BxN, ts_key_BxN, self.num_buckets)
    for i in range(self.num_blocks):
      x_BxNxD = HSTULayer(
          num_heads=self.num_heads,
          dqk=self.dqk,
          dv=self.dv,
          dropout_rate=self.dropout_rate,
          attn_norm_len=self.attn_norm_len,
          num_buckets=self.num_buckets,
          use_time_bias=self.use_time_bias,
          name=f"layer_{i}",
      )(x_BxNxD, buckets, mask_BxNxN, deterministic)
    return x_BxNxD
