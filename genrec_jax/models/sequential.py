"""Sequential recommenders: item embeddings -> encoder (HSTU or SASRec) -> L2-normalised user states.

Input pre-processing as the reference's LearnablePositionalEmbeddingInputFeaturesPreprocessor:
  x = Dropout(E[ids] · √D + P[pos]) ⊙ valid_mask
With `model.sasrec_block='post_ln'` (RecBole's / S3-Rec's SASRec) the input is instead
  x = Dropout(LN(E[ids] + P[pos])) ⊙ valid_mask        (affine LN, eps 1e-12, no √D)
and E, P ~ N(0, 0.02²) (`input_norm=True`, `pos_init='normal_0.02'`).
Positions (`model.positions`):
  'start'   pos = t, counted from each sequence's first event (generative-recommenders)
  'end'     pos = N − L + t for a sequence of L ≤ N events: the original SASRec (and S3-Rec) left-pad
            every window to N, so the newest event always sits at N − 1
Output post-processing (`model.score`):
  'cosine'  u = y / max(‖y‖₂, 1e-6), and the item table is L2-normalised the same way
            (`item_table`): items are scored by cosine similarity (generative-recommenders).
  'dot'     u = LayerNorm(y) (affine), raw item vectors: items are scored by dot product, as the
            original SASRec (its last layer norm, logits = u · E[i]) trained with BCE. In the
            post-LN layout (`input_norm=True`) u = y: the last block already ends in a layer
            norm and S3-Rec / RecBole score that output directly.

Item vectors E (`model.item_features`; the same E feeds the input above and the output table):
  'id'       E = E_id                                    (learned table; the default)
  'text'     E = T W_t + b_t                             (T: frozen [V, 384] text embeddings)
  'id+text'  fused by `model.fusion`:
     'sum'     E = E_id + (T W_t + b_t)
     'concat'  E = [E_id, T W_t + b_t] W_c + b_c          (W_c: [2D, D])
     'gate'    E = g ⊙ E_id + (1 − g) ⊙ (T W_t + b_t),  g = σ(w), w ∈ R^D, init w = 0 (g = ½)
T is a constant of the module (data/text.py computes it), never a parameter: no gradient, no
optimizer state, no checkpoint bytes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genrec_jax.config import ConfigError
from genrec_jax.nn.hstu import ATTENTION_IMPLS, HSTUEncoder
from genrec_jax.nn.transformer import PostLNEncoder, SASRecEncoder

Array = jax.Array
ITEM_FEATURES = ("id", "text", "id+text")
FUSIONS = ("sum", "concat", "gate")
SCORES = ("cosine", "dot")
POSITIONS = ("start", "end")
SASREC_BLOCKS = ("pre_ln", "post_ln")


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenArray:
  """A read-only array held by a module as a constant (jit embeds it; it is not a param).

  Hashed and compared by identity, so modules holding one stay hashable (an ndarray is not).
  """

  value: np.ndarray
  dtype: str = "float32"  # e.g. 'int32' for id tables

  def __post_init__(self):
    value = np.array(self.value, self.dtype)  # a private copy nobody else can write to
    value.setflags(write=False)
    object.__setattr__(self, "value", value)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.value.shape

  def __repr__(self) -> str:
    return f"FrozenArray(shape={self.value.shape}, dtype={self.value.dtype})"


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """x / max(‖x‖₂, eps); the clamp also gives a zero (not NaN) gradient at x = 0. The norm is
  summed in float32 whatever x's dtype; the result keeps x's dtype."""
  sq = jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps)).astype(x.dtype)


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
  pos_init: str = "xavier_normal"  # HSTU re-inits it xavier-normal; SASRec keeps N(0, 1/D); RecBole N(0, 0.02²)
  # The post-LN BERT layout of RecBole's / S3-Rec's SASRec (module docstring): x = LN(E[ids] + P[pos])
  # without √D, E ~ N(0, 0.02²) untruncated, and no final LN before 'dot' scores.
  input_norm: bool = False
  item_features: str = "id"  # 'id' | 'text' | 'id+text' (see the module docstring)
  fusion: str = "sum"  # 'sum' | 'concat' | 'gate', used by 'id+text'
  text_emb: FrozenArray | None = None  # [num_items, text_dim] frozen text embeddings T
  score: str = "cosine"  # 'cosine' | 'dot' (see the module docstring)
  positions: str = "start"  # 'start' | 'end' (see the module docstring)
  # Logical axes of params by name (train/mesh.py maps them to mesh axes with cfg.mesh.rules; others
  # are replicated). A table, not nn.with_logical_partitioning boxes, so model.init's params stay arrays.
  PARAM_AXES = {"item_emb": ("vocab", "embed")}

  def setup(self):
    d = self.embed_dim
    if self.item_features not in ITEM_FEATURES:
      raise ValueError(f"item_features {self.item_features!r} not in {ITEM_FEATURES}")
    if self.item_features != "id":
      if self.text_emb is None or self.text_emb.shape[0] != self.num_items:
        got = None if self.text_emb is None else self.text_emb.shape
        raise ValueError(f"item_features={self.item_features!r} needs text_emb of "
                         f"[{self.num_items}, text_dim], got {got}")
      self.text_proj = nn.Dense(d)
    if self.item_features != "text":
      # RecBole / S3-Rec draw every embedding from N(0, 0.02²); the HSTU reference truncates at ±2σ.
      item_init = nn.initializers.normal(0.02) if self.input_norm else truncated_normal_2sigma(0.02)
      self.item_emb = self.param("item_emb", item_init, (self.num_items, d))
    if self.item_features == "id+text":
      if self.fusion not in FUSIONS:
        raise ValueError(f"fusion {self.fusion!r} not in {FUSIONS}")
      if self.fusion == "concat":
        self.fuse = nn.Dense(d)
      elif self.fusion == "gate":
        self.gate_logit = self.param("gate_logit", nn.initializers.zeros, (d,))
    if self.pos_init == "xavier_normal":
      pos_init = nn.initializers.xavier_normal()
    elif self.pos_init == "normal_0.02":
      pos_init = nn.initializers.normal(0.02)
    else:
      pos_init = truncated_normal_2sigma(math.sqrt(1.0 / d))
    self.pos_emb = self.param("pos_emb", pos_init, (self.max_len, d))
    self.dropout = nn.Dropout(self.input_dropout)
    if self.input_norm:
      self.input_ln = nn.LayerNorm(epsilon=1e-12)
    if self.score not in SCORES:
      raise ValueError(f"score {self.score!r} not in {SCORES}")
    if self.score == "dot" and not self.input_norm:
      self.out_norm = nn.LayerNorm(epsilon=1e-8)
    if self.positions not in POSITIONS:
      raise ValueError(f"positions {self.positions!r} not in {POSITIONS}")

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    """User states at every token of a model batch (see data/pipeline.py), [B, N, D], unit norm
    ('cosine') or layer-normed ('dot'), zero at padding."""
    ids_BxN, seg_BxN = batch["ids"], batch["seg"]
    mask_BxN = seg_BxN != 0
    pos_BxN = batch["pos"]
    if self.positions == "end":  # pos = N − L + t, L = the length of the token's own sequence (segment)
      len_BxN = jnp.sum(seg_BxN[:, :, None] == seg_BxN[:, None, :], axis=-1, dtype=jnp.int32)
      pos_BxN = jnp.where(mask_BxN, pos_BxN + self.max_len - len_BxN, 0)
    if self.input_norm:  # LN(E[ids] + P[pos])
      x_BxNxD = self.input_ln(self.item_vectors()[ids_BxN] + self.pos_emb[pos_BxN])
    else:  # E[ids] · √D + P[pos]
      x_BxNxD = self.item_vectors()[ids_BxN] * math.sqrt(self.embed_dim) + self.pos_emb[pos_BxN]
    x_BxNxD = self.dropout(x_BxNxD, deterministic=deterministic) * mask_BxN[..., None]
    if isinstance(self.encoder, HSTUEncoder):
      y_BxNxD = self.encoder(x_BxNxD, seg_BxN, batch["ts_query"], batch["ts_key"], deterministic)
    else:
      y_BxNxD = self.encoder(x_BxNxD, seg_BxN, deterministic)
    if self.score == "dot":
      u_BxNxD = y_BxNxD if self.input_norm else self.out_norm(y_BxNxD)
      return u_BxNxD * mask_BxN[..., None]
    return l2_normalize(y_BxNxD) * mask_BxN[..., None]

  def item_vectors(self) -> Array:
    """Item vectors E before normalisation, [num_items, D] (equations in the module docstring)."""
    if self.item_features == "id":
      return self.item_emb
    # The whole table at once: V·384·D FLOPs, fewer than projecting the B·N gathered rows.
    text_VxT = jax.lax.stop_gradient(jnp.asarray(self.text_emb.value))
    t_VxD = self.text_proj(text_VxT)  # T W_t + b_t
    if self.item_features == "text":
      return t_VxD
    e_VxD = self.item_emb
    if self.fusion == "sum":
      return e_VxD + t_VxD
    if self.fusion == "concat":
      return self.fuse(jnp.concatenate([e_VxD, t_VxD], axis=-1))  # [E_id, T W_t + b_t] W_c + b_c
    g_D = jax.nn.sigmoid(self.gate_logit)  # g = σ(w)
    return g_D * e_VxD + (1.0 - g_D) * t_VxD

  def item_table(self) -> Array:
    """The vectors users are scored against, [num_items, D]: L2-normalised ('cosine') or raw ('dot')."""
    if self.score == "dot":
      return self.item_vectors()
    return l2_normalize(self.item_vectors())


def build_model(
    cfg: ml_collections.ConfigDict, num_items: int, text_emb: np.ndarray | None = None
) -> SequentialRecommender:
  """Resolves `cfg.model.name` ('hstu' | 'sasrec' | 'hllm') into a module.

  `text_emb` ([num_items, text_dim], from data/text.py `load_item_text_embeddings`) is required by
  model.item_features 'text' and 'id+text' and ignored by 'id'.
  """
  m = cfg.model
  if m.name == "hllm":  # HLLM's user LLM over frozen item-LLM embeddings (models/hllm.py)
    from genrec_jax.models.hllm import build_hllm_recommender  # pylint: disable=g-import-not-at-top

    return build_hllm_recommender(cfg, num_items, text_emb)
  features = m.get("item_features", "id")
  positions = m.get("positions", "start")
  if positions not in POSITIONS:
    raise ConfigError(f"unknown model.positions {positions!r}; expected one of {POSITIONS}")
  fusion = m.get("fusion", "sum")
  score = m.get("score", "cosine")
  if score not in SCORES:
    raise ConfigError(f"unknown model.score {score!r}; expected one of {SCORES}")
  if features not in ITEM_FEATURES:
    raise ConfigError(f"unknown model.item_features {features!r}; expected one of {ITEM_FEATURES}")
  if fusion not in FUSIONS:
    raise ConfigError(f"unknown model.fusion {fusion!r}; expected one of {FUSIONS}")
  frozen = None
  if features != "id":
    if text_emb is None:
      raise ConfigError(
          f"model.item_features={features!r} needs the item text embeddings (data/text.py "
          f"load_item_text_embeddings) passed to build_model"
      )
    if np.ndim(text_emb) != 2 or np.shape(text_emb)[0] != num_items:
      raise ValueError(f"text_emb has shape {np.shape(text_emb)}; expected [{num_items}, text_dim]")
    frozen = FrozenArray(text_emb)
  if m.name == "hstu":
    impl, block = m.get("attention_impl", "dense"), m.get("attention_block", 128)
    if impl not in ATTENTION_IMPLS:
      raise ConfigError(f"unknown model.attention_impl {impl!r}; expected one of {ATTENTION_IMPLS}")
    if not isinstance(block, int) or block < 1:
      raise ConfigError(f"model.attention_block must be a positive int, got {block!r}")
    encoder: Any = HSTUEncoder(
        num_blocks=m.num_blocks,
        num_heads=m.num_heads,
        dqk=m.dqk,
        dv=m.dv,
        dropout_rate=m.dropout,
        attn_norm_len=m.attn_norm_len or cfg.data.max_seq_len,
        num_buckets=m.num_buckets,
        use_time_bias=m.use_time_bias,
        attention_impl=impl,
        attention_block=block,
    )
    pos_init, input_norm = "xavier_normal", False
  elif m.name == "sasrec":
    block = m.get("sasrec_block", "pre_ln")
    if block not in SASREC_BLOCKS:
      raise ConfigError(f"unknown model.sasrec_block {block!r}; expected one of {SASREC_BLOCKS}")
    if block == "post_ln":  # RecBole's / S3-Rec's BERT layout
      encoder = PostLNEncoder(
          num_blocks=m.num_blocks,
          num_heads=m.num_heads,
          ffn_hidden_dim=m.ffn_hidden_dim,
          dropout_rate=m.dropout,
          attn_dropout_rate=m.get("attn_dropout", m.dropout),
      )
      pos_init, input_norm = "normal_0.02", True
    else:
      encoder = SASRecEncoder(
          num_blocks=m.num_blocks,
          num_heads=m.num_heads,
          ffn_hidden_dim=m.ffn_hidden_dim,
          dropout_rate=m.dropout,
      )
      pos_init, input_norm = "truncated_normal", False
  else:
    raise ConfigError(f"unknown model {m.name!r}; expected 'hstu' or 'sasrec'")
  return SequentialRecommender(
      num_items=num_items,
      embed_dim=m.embed_dim,
      max_len=cfg.data.max_seq_len,
      encoder=encoder,
      input_dropout=m.input_dropout,
      pos_init=pos_init,
      input_norm=input_norm,
      item_features=features,
      fusion=fusion,
      text_emb=frozen,
      score=score,
      positions=positions,
  )
