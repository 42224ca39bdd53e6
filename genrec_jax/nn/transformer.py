"""Causal softmax self-attention blocks: SASRec (Kang & McAuley, ICDM 2018, arXiv 1808.09781).

As in the generative-recommenders research baseline (sampled softmax instead of BCE):

  Q   = LN(X)                                   (no affine, eps 1e-8)
  M   = MHA(query=Q, key=X, value=X)            softmax(QKᵀ/√d_h) causal, dropout on weights
  Y   = FFN(LN(Q + M))                          FFN(z) = z + Drop(W2 Drop(ReLU(W1 z + b1)) + b2)
  X'  = Y ⊙ valid_mask

Weights are xavier-normal, attention biases zero, FFN biases torch's default uniform.

`PostLNEncoder` is the BERT layout RecBole's (and S3-Rec's) SASRec uses instead:

  H   = LN(X + Drop(MHA(X, X, X)))              affine LN, eps 1e-12
  X'  = LN(H + Drop(W2 GELU(W1 H + b1) + b2))   exact (erf) GELU
  X'' = X' ⊙ valid_mask

with every weight ~ N(0, 0.02²) and zero biases (RecBole's `_init_weights`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genrec_jax.nn.hstu import attention_mask, layer_norm
from genrec_jax.nn.init import torch_linear_bias

Array = jax.Array


class CausalSelfAttention(nn.Module):
  """torch.nn.MultiheadAttention semantics with a causal mask."""

  num_heads: int
  dropout_rate: float
  init_std: float | None = None  # weights ~ N(0, init_std²); None: xavier-normal (torch's MHA)

  @nn.compact
  def __call__(
      self, q_BxNxD: Array, kv_BxNxD: Array, mask_BxNxN: Array, deterministic: bool
  ) -> Array:
    b, n, d = q_BxNxD.shape
    h = self.num_heads
    dh = d // h
    xavier = nn.initializers.xavier_normal()
    if self.init_std is not None:
      xavier = nn.initializers.normal(self.init_std)
    # torch initialises in_proj_weight as one (3D, D) matrix.
    w_in = self.param("in_proj", lambda k, s: xavier(k, (3 * d, d)).T, (d, 3 * d))
    b_in = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
    q = (q_BxNxD @ w_in[:, :d] + b_in[:d]).reshape(b, n, h, dh)
    k = (kv_BxNxD @ w_in[:, d : 2 * d] + b_in[d : 2 * d]).reshape(b, n, h, dh)
    v = (kv_BxNxD @ w_in[:, 2 * d :] + b_in[2 * d :]).reshape(b, n, h, dh)
    logits_BxHxNxN = jnp.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(dh)
    logits_BxHxNxN = jnp.where(mask_BxNxN[:, None], logits_BxHxNxN, -jnp.inf)
    w_BxHxNxN = jax.nn.softmax(logits_BxHxNxN.astype(jnp.float32), axis=-1).astype(v.dtype)
    w_BxHxNxN = nn.Dropout(self.dropout_rate)(w_BxHxNxN, deterministic=deterministic)
    out = jnp.einsum("bhnm,bmhd->bnhd", w_BxHxNxN, v).reshape(b, n, d)
    return nn.Dense(d, kernel_init=xavier, bias_init=nn.initializers.zeros, name="out_proj")(out)


class PointwiseFFN(nn.Module):
  hidden_dim: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x_BxNxD: Array, deterministic: bool) -> Array:
    d = x_BxNxD.shape[-1]
    xavier = nn.initializers.xavier_normal()
    drop = nn.Dropout(self.dropout_rate)
    y = nn.Dense(self.hidden_dim, kernel_init=xavier, bias_init=torch_linear_bias(d), name="w1")(x_BxNxD)
    y = drop(jax.nn.relu(y), deterministic=deterministic)
    y = nn.Dense(d, kernel_init=xavier, bias_init=torch_linear_bias(self.hidden_dim), name="w2")(y)
    return drop(y, deterministic=deterministic) + x_BxNxD


class SASRecEncoder(nn.Module):
  num_blocks: int
  num_heads: int
  ffn_hidden_dim: int
  dropout_rate: float
  eps: float = 1e-8

  @nn.compact
  def __call__(self, x_BxNxD: Array, seg_BxN: Array, deterministic: bool) -> Array:
    mask_BxNxN = attention_mask(seg_BxN)  # causal within a sequence; padding attends to padding
    mask_BxN = seg_BxN != 0
    for i in range(self.num_blocks):
      q = layer_norm(x_BxNxD, self.eps)
      m = CausalSelfAttention(self.num_heads, self.dropout_rate, name=f"attn_{i}")(
          q, x_BxNxD, mask_BxNxN, deterministic
      )
      y = PointwiseFFN(self.ffn_hidden_dim, self.dropout_rate, name=f"ffn_{i}")(
          layer_norm(q + m, self.eps), deterministic
      )
      x_BxNxD = y * mask_BxN[..., None]
    return x_BxNxD


class PostLNEncoder(nn.Module):
  """SASRec in the BERT layout of RecBole / S3-Rec (module docstring): post-LN blocks, GELU FFN."""

  num_blocks: int
  num_heads: int
  ffn_hidden_dim: int
  dropout_rate: float  # hidden (residual-branch) dropout
  attn_dropout_rate: float  # dropout on the attention weights
  eps: float = 1e-12
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x_BxNxD: Array, seg_BxN: Array, deterministic: bool) -> Array:
    mask_BxNxN = attention_mask(seg_BxN)
    mask_BxN = seg_BxN != 0
    d = x_BxNxD.shape[-1]
    init, zeros = nn.initializers.normal(self.init_std), nn.initializers.zeros
    drop = nn.Dropout(self.dropout_rate)
    for i in range(self.num_blocks):
      m = CausalSelfAttention(self.num_heads, self.attn_dropout_rate, self.init_std, name=f"attn_{i}")(
          x_BxNxD, x_BxNxD, mask_BxNxN, deterministic
      )
      h = nn.LayerNorm(epsilon=self.eps, name=f"attn_norm_{i}")(x_BxNxD + drop(m, deterministic=deterministic))
      f = nn.Dense(self.ffn_hidden_dim, kernel_init=init, bias_init=zeros, name=f"ffn_{i}_w1")(h)
      f = nn.Dense(d, kernel_init=init, bias_init=zeros, name=f"ffn_{i}_w2")(jax.nn.gelu(f, approximate=False))
      x_BxNxD = nn.LayerNorm(epsilon=self.eps, name=f"ffn_norm_{i}")(h + drop(f, deterministic=deterministic))
      x_BxNxD = x_BxNxD * mask_BxN[..., None]
    return x_BxNxD
