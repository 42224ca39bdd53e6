"""Collaborative-filtering retrieval models: MF-BPR, two-tower retrieval, YouTubeDNN.

All three give a user vector u and an item table V and score s(u, i) = <u, v_i>, so evaluation is
the same full ranking as the sequential models (`metrics.target_ranks(user_BxD, ..., V, ...)`).

  MF-BPR (Rendle et al., UAI 2009)
    s(u, i) = <p_u, q_i> + b_i          (b_i optional; folded in as u' = [p_u, 1], v'_i = [q_i, b_i])
    trained with BPR, −log σ(s(u, i) − s(u, j)), one negative j per (u, i) drawn uniformly from the
    items u has not seen, + λ‖Θ‖².

  Two-tower retrieval (Yi et al., RecSys 2019)
    u = normalise(MLP_u([E_gender[g], E_age[a], E_occ[o], E_zip[z], mean_{h ∈ history} H[h]]))
    v_i = normalise(MLP_v([E_item[i], mean_{a ∈ attrs(i)} E_attr[a]]))
    s(u, i) = <u, v_i> / τ, trained with the in-batch softmax with logQ correction
    (`losses.in_batch_softmax_loss`).

  YouTubeDNN candidate generation (Covington et al., RecSys 2016)
    u = ReLU-MLP([mean_{h ∈ watches} W[h], user-feature embeddings])     (last layer linear)
    s(u, i) = <u, v_i> with v_i a row of the softmax output table (separate from W, as the
    paper's softmax weights), trained with a sampled softmax.

Every input that is not a learned parameter arrives in the batch ('user' row index, 'user_feats'
categorical ids [B, F] with 0 = unknown, 'history' item ids [B, H] with 0 = padding) except the
item features, which `item_table` needs for the whole catalog: they are a constant of the module.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genrec_jax.config import ConfigError
from genrec_jax.models.sequential import FrozenArray, l2_normalize

Array = jax.Array
MODELS = ("mf_bpr", "two_tower", "youtubednn")


def masked_mean(emb_BxNxD: Array, ids_BxN: Array) -> Array:
  """mean_{n: ids[n] ≠ 0} emb[n], zero for an empty set. [B, D]"""
  mask_BxN = (ids_BxN != 0).astype(emb_BxNxD.dtype)
  total_BxD = jnp.einsum("bnd,bn->bd", emb_BxNxD, mask_BxN)
  return total_BxD / jnp.maximum(jnp.sum(mask_BxN, axis=1, keepdims=True), 1.0)


class MLP(nn.Module):
  """Dense + ReLU for each hidden width, then a linear Dense to `out_dim`."""

  hidden_dims: Sequence[int]
  out_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for width in self.hidden_dims:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.out_dim)(x)


class FeatureEmbeddings(nn.Module):
  """Concatenated embeddings of F categorical fields, E_f[ids[:, f]], [B, F·D] (0 = unknown)."""

  vocab_sizes: Sequence[int]
  embed_dim: int

  @nn.compact
  def __call__(self, ids_BxF: Array) -> Array:
    init = nn.initializers.normal(0.05)
    parts = [nn.Embed(v, self.embed_dim, embedding_init=init, name=f"field{f}")(ids_BxF[:, f])
             for f, v in enumerate(self.vocab_sizes)]
    return jnp.concatenate(parts, axis=-1)


class MatrixFactorization(nn.Module):
  """s(u, i) = <p_u, q_i> + b_i (module docstring)."""

  num_users: int
  num_items: int
  embed_dim: int
  use_bias: bool = True
  init_std: float = 0.1  # Rendle's N(0, 0.1²) initialisation

  def setup(self):
    init = nn.initializers.normal(self.init_std)
    self.user_emb = self.param("user_emb", init, (self.num_users, self.embed_dim))
    self.item_emb = self.param("item_emb", init, (self.num_items, self.embed_dim))
    if self.use_bias:
      self.item_bias = self.param("item_bias", nn.initializers.zeros, (self.num_items,))

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    return self.user_vectors(batch)

  def user_vectors(self, batch: dict[str, Array]) -> Array:
    """u' = [p_u, 1] (with bias) or p_u. [B, D(+1)]"""
    p_BxD = self.user_emb[batch["user"]]
    if not self.use_bias:
      return p_BxD
    return jnp.concatenate([p_BxD, jnp.ones_like(p_BxD[:, :1])], axis=-1)

  def item_vectors(self, ids_B: Array) -> Array:
    """v'_i = [q_i, b_i] (with bias) or q_i. [B, D(+1)]"""
    q_BxD = self.item_emb[ids_B]
    if not self.use_bias:
      return q_BxD
    return jnp.concatenate([q_BxD, self.item_bias[ids_B][:, None]], axis=-1)

  def item_table(self) -> Array:
    return self.item_vectors(jnp.arange(self.num_items))

  def l2_rows(self, batch: dict[str, Array], pos_B: Array, neg_B: Array) -> tuple[Array, ...]:
    """The parameters of the sampled triples (p_u, q_i, q_j, b_i, b_j), for BPR's λ‖Θ‖²."""
    rows = (self.user_emb[batch["user"]], self.item_emb[pos_B], self.item_emb[neg_B])
    if self.use_bias:
      rows += (self.item_bias[pos_B][:, None], self.item_bias[neg_B][:, None])
    return rows


class TwoTower(nn.Module):
  """Yi et al. 2019 two-tower retrieval (module docstring); unit-norm outputs."""

  num_items: int
  embed_dim: int
  hidden_dims: Sequence[int]
  user_vocab_sizes: Sequence[int] = ()  # categorical user fields (none: history only)
  num_attributes: int = 0  # attribute vocabulary (ids 1..num_attributes-1), 0 = no item features
  item_attrs: FrozenArray | None = None  # [num_items, A] attribute ids of each item, 0-padded
  use_history: bool = True

  def setup(self):
    init = nn.initializers.normal(0.05)
    d = self.embed_dim
    self.item_id_emb = nn.Embed(self.num_items, d, embedding_init=init)
    if self.use_history:
      self.history_emb = nn.Embed(self.num_items, d, embedding_init=init)
    if self.user_vocab_sizes:
      self.user_fields = FeatureEmbeddings(tuple(self.user_vocab_sizes), d)
    if not self.user_vocab_sizes and not self.use_history:
      raise ValueError("the user tower needs user features or the history")
    if self.num_attributes:
      if self.item_attrs is None or self.item_attrs.shape[0] != self.num_items:
        raise ValueError(f"num_attributes > 0 needs item_attrs of [{self.num_items}, A]")
      self.attr_emb = nn.Embed(self.num_attributes, d, embedding_init=init)
    self.user_mlp = MLP(tuple(self.hidden_dims), d)
    self.item_mlp = MLP(tuple(self.hidden_dims), d)

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    return self.user_vectors(batch)

  def user_vectors(self, batch: dict[str, Array]) -> Array:
    """u = normalise(MLP_u([user-field embeddings, mean H[history]])). [B, D]"""
    parts = []
    if self.user_vocab_sizes:
      parts.append(self.user_fields(batch["user_feats"]))
    if self.use_history:
      parts.append(masked_mean(self.history_emb(batch["history"]), batch["history"]))
    return l2_normalize(self.user_mlp(jnp.concatenate(parts, axis=-1)))

  def item_vectors(self, ids_B: Array) -> Array:
    """v_i = normalise(MLP_v([E_item[i], mean E_attr[attrs(i)]])). [B, D]"""
    parts = [self.item_id_emb(ids_B)]
    if self.num_attributes:
      attrs_BxA = jnp.asarray(self.item_attrs.value)[ids_B]
      parts.append(masked_mean(self.attr_emb(attrs_BxA), attrs_BxA))
    return l2_normalize(self.item_mlp(jnp.concatenate(parts, axis=-1)))

  def item_table(self) -> Array:
    return self.item_vectors(jnp.arange(self.num_items))


class YouTubeDNN(nn.Module):
  """Covington et al. 2016 candidate generation (module docstring); unnormalised dot products."""

  num_items: int
  embed_dim: int
  hidden_dims: Sequence[int]
  user_vocab_sizes: Sequence[int] = ()

  def setup(self):
    init = nn.initializers.normal(0.05)
    self.watch_emb = nn.Embed(self.num_items, self.embed_dim, embedding_init=init)
    if self.user_vocab_sizes:
      self.user_fields = FeatureEmbeddings(tuple(self.user_vocab_sizes), self.embed_dim)
    self.tower = MLP(tuple(self.hidden_dims), self.embed_dim)
    # The softmax output weights: row i is item i's vector at serving time.
    self.output_emb = self.param("output_emb", init, (self.num_items, self.embed_dim))

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    return self.user_vectors(batch)

  def user_vectors(self, batch: dict[str, Array]) -> Array:
    """u = MLP([mean W[watches], user-field embeddings]). [B, D]"""
    parts = [masked_mean(self.watch_emb(batch["history"]), batch["history"])]
    if self.user_vocab_sizes:
      parts.append(self.user_fields(batch["user_feats"]))
    return self.tower(jnp.concatenate(parts, axis=-1))

  def item_vectors(self, ids_B: Array) -> Array:
    return self.output_emb[ids_B]

  def item_table(self) -> Array:
    return self.output_emb


def build_tower_model(
    cfg: ml_collections.ConfigDict,
    num_users: int,
    num_items: int,
    user_vocab_sizes: Sequence[int] = (),
    item_attrs: np.ndarray | None = None,
) -> nn.Module:
  """Resolves `cfg.model.name` (one of MODELS). `user_vocab_sizes`: the categorical user fields
  (empty when the dataset has none or model.user_features is off); `item_attrs`: [num_items, A]
  item attribute ids (None: no item features)."""
  m = cfg.model
  hidden = tuple(m.hidden_dims)
  users = tuple(user_vocab_sizes) if m.get("user_features", True) else ()
  if m.name == "mf_bpr":
    return MatrixFactorization(num_users, num_items, m.embed_dim, use_bias=m.use_bias,
                               init_std=m.get("init_std", 0.1))
  if m.name == "two_tower":
    use_attrs = m.get("item_features", True) and item_attrs is not None and item_attrs.shape[1] > 0
    return TwoTower(
        num_items=num_items,
        embed_dim=m.embed_dim,
        hidden_dims=hidden,
        user_vocab_sizes=users,
        num_attributes=int(item_attrs.max()) + 1 if use_attrs else 0,
        item_attrs=FrozenArray(item_attrs, "int32") if use_attrs else None,
        use_history=m.use_history,
    )
  if m.name == "youtubednn":
    return YouTubeDNN(num_items, m.embed_dim, hidden, users)
  raise ConfigError(f"unknown model.name {m.name!r}; expected one of {MODELS}")
