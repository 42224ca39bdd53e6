"""GENRE-style multi-task hybrid: one shared sequence encoder, several heads, an optional CF tower.

Shared encoder: a `SequentialRecommender` (HSTU) gives the user state u_t after each event t
(unit norm) and the item table e_i (unit norm, `item_table`).
Heads, at every position t whose next event (i, r) is known:
  retrieval   s_seq(t, i) = <u_t, e_i> / τ                        (next-item sampled softmax)
  rating      r̂_t = MLP_r([u_t, e_i])                              (regression on r ∈ 1..5)
  liked       ℓ_t = MLP_l([u_t, e_i]),  p = σ(ℓ_t)                 (classification of r ≥ 4)
The pointwise heads see the candidate item's vector, as a ranking head sees the item it scores.
MLP(x) = W₂ SiLU(W₁ x + b₁) + b₂; the rating head's b₂ starts at the mean training rating.

CF tower (optional): matrix factorisation, user vectors P_u and item vectors Q_i, blended into the
retrieval score
  s(u, t, i) = w · s_seq(t, i) + (1 − w) · <P_u, Q_i>,   w = σ(β) learned, or fixed.
It is computed as one dot product, so the existing sampled softmax and full ranking apply as they
are: s = <q, k> / τ with q = [w u_t, (1 − w) τ P_u] and k_i = [e_i, Q_i] (`retrieval_vectors`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genrec_jax.config import ConfigError
from genrec_jax.models.sequential import SequentialRecommender, build_model, truncated_normal_2sigma

Array = jax.Array
POINTWISE_HEADS = ("rating", "liked")
BLENDS = ("learned", "fixed")


class PointwiseHead(nn.Module):
  """MLP([u, e]) -> one scalar per position: W₂ SiLU(W₁ [u, e] + b₁) + b₂."""

  hidden: int
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, user_xD: Array, item_xD: Array) -> Array:
    h_xH = nn.silu(nn.Dense(self.hidden, name="hidden")(jnp.concatenate([user_xD, item_xD], axis=-1)))
    out_x1 = nn.Dense(1, name="out", bias_init=nn.initializers.constant(self.bias_init))(h_xH)
    return out_x1[..., 0]


class MultiTaskRecommender(nn.Module):
  seq: SequentialRecommender  # the shared encoder and item table
  heads: tuple[str, ...]  # pointwise heads that exist: a subset of POINTWISE_HEADS
  head_hidden: int
  rating_mean: float  # initial output of the rating head
  temperature: float  # τ of the retrieval score
  num_users: int = 0  # rows of the CF user table (0 = no CF tower)
  cf_dim: int = 0
  blend: str = "learned"  # 'learned' (w = σ(β), β trained) | 'fixed'
  blend_weight: float = 0.5  # w (fixed), or its initial value (learned)

  def setup(self):
    if self.blend not in BLENDS:
      raise ValueError(f"blend {self.blend!r} not in {BLENDS}")
    if "rating" in self.heads:
      self.rating_head = PointwiseHead(self.head_hidden, self.rating_mean)
    if "liked" in self.heads:
      self.liked_head = PointwiseHead(self.head_hidden, 0.0)
    if self.cf_dim:
      self.cf_user = self.param("cf_user", truncated_normal_2sigma(0.02), (self.num_users, self.cf_dim))
      self.cf_item = self.param("cf_item", truncated_normal_2sigma(0.02), (self.seq.num_items, self.cf_dim))
      if self.blend == "learned":
        w0 = self.blend_weight
        self.blend_logit = self.param("blend_logit", nn.initializers.constant(math.log(w0 / (1.0 - w0))), ())

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    """Shared user states u_t, [B, N, D] (models/sequential.py)."""
    return self.seq(batch, deterministic=deterministic)

  def item_table(self) -> Array:
    return self.seq.item_table()

  def rating(self, user_xD: Array, item_ids_x: Array) -> Array:
    """r̂ = MLP_r([u, e_i])."""
    return self.rating_head(user_xD, self.seq.item_table()[item_ids_x])

  def liked_logit(self, user_xD: Array, item_ids_x: Array) -> Array:
    """ℓ = MLP_l([u, e_i]); P(liked) = σ(ℓ)."""
    return self.liked_head(user_xD, self.seq.item_table()[item_ids_x])

  def blend_w(self) -> Array:
    if self.blend == "learned":
      return jax.nn.sigmoid(self.blend_logit)  # w = σ(β)
    return jnp.asarray(self.blend_weight, jnp.float32)

  def retrieval_vectors(self, user_xD: Array, user_idx_x: Array | None) -> tuple[Array, Array]:
    """(q, K): <q, K_i> / τ is the retrieval score of item i (the blend in the module doc)."""
    table_VxD = self.seq.item_table()
    if not self.cf_dim:
      return user_xD, table_VxD
    w = self.blend_w()
    p_xF = self.cf_user[user_idx_x]
    # q = [w u, (1 − w) τ P_u],  K_i = [e_i, Q_i]  =>  <q, K_i> / τ = w s_seq + (1 − w) <P_u, Q_i>
    q_xDF = jnp.concatenate([w * user_xD, (1.0 - w) * self.temperature * p_xF], axis=-1)
    return q_xDF, jnp.concatenate([table_VxD, self.cf_item], axis=-1)

  def init_all(self, batch: dict[str, Array]) -> Array:
    """Touches every submodule (for `init`)."""
    user_BxNxD = self(batch)
    ids_BxN = batch["targets"]
    out = jnp.sum(self.retrieval_vectors(user_BxNxD, jnp.zeros_like(ids_BxN) if self.cf_dim else None)[0])
    for h in self.heads:
      out = out + jnp.sum(self.rating(user_BxNxD, ids_BxN) if h == "rating" else self.liked_logit(user_BxNxD, ids_BxN))
    return out


def build_multitask_model(
    cfg: ml_collections.ConfigDict, num_items: int, num_users: int, rating_mean: float
) -> MultiTaskRecommender:
  """The shared encoder from cfg.model (`build_model`), the heads of the tasks that are on, and
  the CF tower when cfg.cf.on."""
  seq = build_model(cfg, num_items)
  if not isinstance(seq, SequentialRecommender):
    raise ConfigError(f"model.name={cfg.model.name!r} is not a SequentialRecommender encoder")
  heads = tuple(h for h in POINTWISE_HEADS if cfg.tasks[h].on)
  cf = cfg.cf
  if cf.on:
    if cf.blend not in BLENDS:
      raise ConfigError(f"unknown cf.blend {cf.blend!r}; expected one of {BLENDS}")
    if not 0.0 < cf.weight < 1.0 and cf.blend == "learned":
      raise ConfigError(f"cf.weight (the initial w of a learned blend) must be in (0, 1), got {cf.weight}")
    if not 0.0 <= cf.weight <= 1.0:
      raise ConfigError(f"cf.weight must be in [0, 1], got {cf.weight}")
    if cf.dim < 1:
      raise ConfigError(f"cf.dim must be >= 1 with cf.on, got {cf.dim}")
  return MultiTaskRecommender(
      seq=seq, heads=heads, head_hidden=cfg.heads.hidden, rating_mean=float(rating_mean),
      temperature=cfg.loss.temperature, num_users=num_users if cf.on else 0,
      cf_dim=cf.dim if cf.on else 0, blend=cf.blend, blend_weight=cf.weight,
  )
