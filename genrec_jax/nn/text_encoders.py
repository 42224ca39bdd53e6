"""BERT text encoder (Devlin et al., NAACL 2019, arXiv 1810.04805) as in all-MiniLM-L6-v2.

Hugging Face `BertModel` semantics (post-LN), plus the sentence-transformers pooling:

  X_0 = LN(E_word[t] + E_pos[i] + E_type[s])                         (eps 1e-12)
  A   = softmax(Q Kᵀ / √d_h + mask) V,  Q, K, V = X W_{q,k,v} + b      (padding keys masked)
  X'  = LN(X + A W_o + b_o)                                          (post-LN residual)
  Y   = LN(X' + GELU(X' W_1 + b_1) W_2 + b_2)                        (exact erf GELU)
  s   = normalise(Σ_i m_i Y_i / Σ_i m_i)                              (mean over non-padding tokens)

Dropout (0.1 on attention weights and on each sub-layer output) is active only when
deterministic=False. The module never reads files: pretrained weights come from
genrec_jax/pretrained/bert.py.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT shapes; the defaults are all-MiniLM-L6-v2's (22.7 M parameters)."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02


MINILM_L6_V2 = BertConfig()


def masked_mean_pool(h_BxLxD: Array, mask_BxL: Array) -> Array:
  """Mean of the token states over non-padding positions (sentence-transformers' mean pooling)."""
  m_BxLx1 = mask_BxL[..., None].astype(h_BxLxD.dtype)
  # s = Σ_i m_i h_i / max(Σ_i m_i, 1e-9)
  return jnp.sum(h_BxLxD * m_BxLx1, axis=1) / jnp.maximum(jnp.sum(m_BxLx1, axis=1), 1e-9)


def l2_normalize(x_BxD: Array, eps: float = 1e-12) -> Array:
  """x / max(‖x‖₂, eps) over the last axis (torch.nn.functional.normalize)."""
  return x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), eps)


class BertSelfAttention(nn.Module):
  """Bidirectional multi-head softmax attention; padding keys get a large negative logit."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, mask_BxL: Array, deterministic: bool) -> Array:
    cfg = self.config
    b, l, d = x_BxLxD.shape
    h = cfg.num_heads
    dh = d // h
    dense = lambda name: nn.Dense(
        d, kernel_init=nn.initializers.normal(cfg.initializer_range), name=name
    )
    q_BxLxHxK = dense("query")(x_BxLxD).reshape(b, l, h, dh)
    k_BxLxHxK = dense("key")(x_BxLxD).reshape(b, l, h, dh)
    v_BxLxHxK = dense("value")(x_BxLxD).reshape(b, l, h, dh)
    # A = softmax(QKᵀ/√d_h + mask) V. A finite mask value (as in HF) keeps an all-padding row
    # finite; its exp underflows to exactly 0 next to any real key.
    logits_BxHxLxL = jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK, k_BxLxHxK) / math.sqrt(dh)
    neg = jnp.finfo(logits_BxHxLxL.dtype).min
    logits_BxHxLxL = jnp.where(mask_BxL[:, None, None, :], logits_BxHxLxL, neg)
    w_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1)
    w_BxHxLxL = nn.Dropout(cfg.attention_dropout_rate)(w_BxHxLxL, deterministic=deterministic)
    a_BxLxD = jnp.einsum("bhlm,bmhk->blhk", w_BxHxLxL, v_BxLxHxK).reshape(b, l, d)
    return dense("output")(a_BxLxD)


class BertLayer(nn.Module):
  """One post-LN transformer block: X' = LN(X + Attn(X)), Y = LN(X' + FFN(X'))."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, mask_BxL: Array, deterministic: bool) -> Array:
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    drop = nn.Dropout(cfg.dropout_rate)
    ln = lambda name: nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name
    )
    # X' = LN(X + Dropout(Attn(X)))
    a_BxLxD = BertSelfAttention(cfg, name="attention")(x_BxLxD, mask_BxL, deterministic)
    x_BxLxD = ln("attention_layer_norm")(x_BxLxD + drop(a_BxLxD, deterministic=deterministic))
    # Y = LN(X' + Dropout(GELU(X' W_1 + b_1) W_2 + b_2)), exact erf GELU
    f_BxLxF = nn.Dense(cfg.intermediate_size, kernel_init=init, name="intermediate")(x_BxLxD)
    f_BxLxF = jax.nn.gelu(f_BxLxF, approximate=False)
    f_BxLxD = nn.Dense(cfg.hidden_size, kernel_init=init, name="output")(f_BxLxF)
    return ln("output_layer_norm")(x_BxLxD + drop(f_BxLxD, deterministic=deterministic))


class BertEncoder(nn.Module):
  """BERT token states [B, L, D]; `sentence_embedding` adds mean pooling + L2 normalisation.

  Params: {word,position,token_type}_embeddings/embedding, embeddings_layer_norm/{scale,bias},
  layer_{i}/attention/{query,key,value,output}/{kernel,bias}, layer_{i}/attention_layer_norm,
  layer_{i}/{intermediate,output}/{kernel,bias}, layer_{i}/output_layer_norm (kernels [in, out]).
  """

  config: BertConfig = MINILM_L6_V2

  @nn.compact
  def __call__(
      self,
      ids_BxL: Array,
      mask_BxL: Array,
      type_ids_BxL: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    cfg = self.config
    l = ids_BxL.shape[1]
    if l > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {l} > max_position_embeddings {cfg.max_position_embeddings}")
    if type_ids_BxL is None:
      type_ids_BxL = jnp.zeros_like(ids_BxL)
    mask_BxL = mask_BxL.astype(bool)
    init = nn.initializers.normal(cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.hidden_size, embedding_init=init, name=name)
    # X_0 = LN(E_word[t] + E_pos[i] + E_type[s]); absolute positions 0..L-1.
    x_BxLxD = (
        embed(cfg.vocab_size, "word_embeddings")(ids_BxL)
        + embed(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(l))[None]
        + embed(cfg.type_vocab_size, "token_type_embeddings")(type_ids_BxL)
    )
    x_BxLxD = nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="embeddings_layer_norm"
    )(x_BxLxD)
    x_BxLxD = nn.Dropout(cfg.dropout_rate)(x_BxLxD, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x_BxLxD = BertLayer(cfg, name=f"layer_{i}")(x_BxLxD, mask_BxL, deterministic)
    return x_BxLxD

  def sentence_embedding(
      self,
      ids_BxL: Array,
      mask_BxL: Array,
      type_ids_BxL: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """s = normalise(mean of token states over non-padding tokens): [B, D], unit L2 norm."""
    h_BxLxD = self(ids_BxL, mask_BxL, type_ids_BxL, deterministic)
    return l2_normalize(masked_mean_pool(h_BxLxD, mask_BxL))
