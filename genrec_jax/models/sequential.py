"""Sequential recommenders: item embeddings -> encoder (HSTU or SASRec) -> L2-normalised user states.

Input pre-processing as the reference's LearnablePositionalEmbeddingInputFeaturesPreprocessor:
  x = Dropout(E[ids] · √D + P[pos]) ⊙ valid_mask
Output post-processing: u = y / max(‖y‖₂, 1e-6). Items are scored by cosine similarity, so the
item table is L2-normalised the same way (`item_table`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genrec_jax.config import ConfigError
from genrec_jax.nn.hstu import HSTUEncoder
from genrec_jax.nn.transformer import SASRecEncoder

Array = jax.Array


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """x / max(‖x‖₂, eps); the clamp also gives a zero (not NaN) gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def truncated_normal_2sigma(stddev: float):
  """N(0, stddev²) truncated at ±2σ (the reference's item-embedding init)."""
  return lambda key, shape, dtype=jnp.float32: stddev * jax.random.truncated_normal(
      key, -2.0, 2.0, shape, dtype
  )


class SequentialRecommender(nn.Module):
  num_items: int  # rows of the item table (max item id + 1; row 0 is padding)
  embed_dim: int
  max_len: int
  encoder: nn.Module
  input_dropout: float
  pos_init: str = "xavier_normal"  # HSTU re-inits it xavier-normal; SASRec keeps N(0, 1/D)

  def setup(self):
    d = self.embed_dim
    self.item_emb = self.param("item_emb", truncated_normal_2sigma(0.02), (self.num_items, d))
    if self.pos_init == "xavier_normal":
      pos_init = nn.initializers.xavier_normal()
    else:
      pos_init = truncated_normal_2sigma(math.sqrt(1.0 / d))
    self.pos_emb = self.param("pos_emb", pos_init, (self.max_len, d))
    self.dropout = nn.Dropout(self.input_dropout)

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    """User states at every token of a model batch (see data/pipeline.py), [B, N, D], unit norm,
    zero at padding."""
    ids_BxN, seg_BxN = batch["ids"], batch["seg"]
    mask_BxN = seg_BxN != 0
    x_BxNxD = self.item_emb[ids_BxN] * math.sqrt(self.embed_dim) + self.pos_emb[batch["pos"]]
    x_BxNxD = self.dropout(x_BxNxD, deterministic=deterministic) * mask_BxN[..., None]
    if isinstance(self.encoder, HSTUEncoder):
      y_BxNxD = self.encoder(x_BxNxD, seg_BxN, batch["ts_query"], batch["ts_key"], deterministic)
    else:
      y_BxNxD = self.encoder(x_BxNxD, seg_BxN, deterministic)
    return l2_normalize(y_BxNxD) * mask_BxN[..., None]

  def item_table(self) -> Array:
    """L2-normalised item embeddings, [num_items, D]."""
    return l2_normalize(self.item_emb)


def build_model(cfg: ml_collections.ConfigDict, num_items: int) -> SequentialRecommender:
  """Resolves `cfg.model.name` ('hstu' | 'sasrec') into a module."""
  m = cfg.model
  if m.name == "hstu":
    encoder: Any = HSTUEncoder(
        num_blocks=m.num_blocks,
        num_heads=m.num_heads,
        dqk=m.dqk,
        dv=m.dv,
        dropout_rate=m.dropout,
        attn_norm_len=m.attn_norm_len or cfg.data.max_seq_len,
        num_buckets=m.num_buckets,
        use_time_bias=m.use_time_bias,
    )
    pos_init = "xavier_normal"
  elif m.name == "sasrec":
    encoder = SASRecEncoder(
        num_blocks=m.num_blocks,
        num_heads=m.num_heads,
        ffn_hidden_dim=m.ffn_hidden_dim,
        dropout_rate=m.dropout,
    )
    pos_init = "truncated_normal"
  else:
    raise ConfigError(f"unknown model {m.name!r}; expected 'hstu' or 'sasrec'")
  return SequentialRecommender(
      num_items=num_items,
      embed_dim=m.embed_dim,
      max_len=cfg.data.max_seq_len,
      encoder=encoder,
      input_dropout=m.input_dropout,
      pos_init=pos_init,
  )
