"""CFGAN (Chae, Kang, Kim, Lee: "CFGAN: A Generic Collaborative Filtering Framework based on
Generative Adversarial Networks", CIKM 2018): a conditional GAN over real-valued purchase vectors.

For a row u (a user, or an item in the item-based variant) with 0/1 purchase vector c_u:
  G(c_u) = r̂_u            an MLP (sigmoid hidden layers, linear output; no noise z, as the
                           authors' code), conditioned on c_u only
  D(c_u ⊕ r) ∈ (0, 1)      an MLP over the condition concatenated with a real (c_u) or fake vector
Fake vectors are masked so that G is only judged on the purchased items plus the partial-masking
(PM) negatives k_u (a fraction S_PM of the unpurchased items, resampled each epoch):
  fake_u = r̂_u ⊙ (e_u + k_u)                         (e_u = c_u for implicit feedback)
  J^D = -Σ_u [log D(c_u ⊕ c_u) + log(1 - D(c_u ⊕ fake_u))] + reg_D ½||θ_D||²
  J^G =  Σ_u -log D(c_u ⊕ fake_u) + α Σ_u Σ_{j ∈ N^ZR_u} r̂_uj²  + reg_G ½||θ_G||²
The α term is zero-reconstruction (ZR): r̂ is pulled to 0 on another fraction S_ZR of the
unpurchased items N^ZR_u. G uses the non-saturating loss; sums over u are batch means and the ZR
term is the batch mean of the per-row sum, as in the authors' TensorFlow code. Init: Glorot-uniform
weights, biases U(-0.01, 0.01) (their code). Items are ranked for u by r̂_u.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array

SCHEMES = ("ZR", "PM", "ZP")  # zero-reconstruction, partial masking, both (the authors' 'ZP')
MODES = ("user", "item")  # rows are users (uCFGAN) or items (iCFGAN)


def _bias_init(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -0.01, 0.01)


class MLP(nn.Module):
  """`num_hidden` sigmoid layers of width `hidden_dim`, then a linear layer to `out_dim`."""

  hidden_dim: int
  num_hidden: int
  out_dim: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_hidden):
      x = nn.sigmoid(nn.Dense(self.hidden_dim, kernel_init=nn.initializers.glorot_uniform(),
                              bias_init=_bias_init, name=f"hidden_{i}")(x))
    return nn.Dense(self.out_dim, kernel_init=nn.initializers.glorot_uniform(),
                    bias_init=_bias_init, name="out")(x)


def build_cfgan(cfg: ml_collections.ConfigDict, vector_dim: int) -> tuple[MLP, MLP]:
  """(generator [V] -> [V], discriminator [2V] -> logit [1]) for vectors of length V."""
  m = cfg.model
  gen = MLP(m.g_hidden_dim, m.g_hidden_layers, vector_dim)
  disc = MLP(m.d_hidden_dim, m.d_hidden_layers, 1)
  return gen, disc


def sample_unobserved(key: Array, observed_BxV: Array, ratio: float) -> Array:
  """0/1 mask of floor(ratio · #unobserved) unobserved entries per row, uniformly without
  replacement (`key` is [B] keys, one per row). [B, V] float32.

  Each unobserved entry gets a U(0, 1) draw (observed ones +inf); a row keeps its k smallest."""
  u_BxV = jax.vmap(lambda k: jax.random.uniform(k, observed_BxV.shape[1:]))(key)
  u_BxV = jnp.where(observed_BxV > 0, jnp.inf, u_BxV)
  n_pick_B = jnp.floor(ratio * jnp.sum(observed_BxV <= 0, axis=1)).astype(jnp.int32)
  kth_B = jnp.take_along_axis(jnp.sort(u_BxV, axis=1), jnp.maximum(n_pick_B - 1, 0)[:, None], axis=1)
  return ((u_BxV <= kth_B) & (n_pick_B[:, None] > 0)).astype(jnp.float32)


def l2_half(params) -> Array:
  """½ Σ θ² over every parameter (tf.nn.l2_loss summed, as the authors' regulariser)."""
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params))


def _bce_with_logits(logits: Array, label: float) -> Array:
  """Mean binary cross-entropy of sigmoid(logits) against a constant label y:
  -[y log σ(l) + (1 - y) log(1 - σ(l))] = softplus(l) - y l (the stable form)."""
  return jnp.mean(jax.nn.softplus(logits) - label * logits)


def discriminator_loss(disc: MLP, d_params, c_BxV: Array, fake_BxV: Array, reg_d: float) -> Array:
  """J^D (module doc) for one batch; fake_BxV = r̂ ⊙ mask, with G held fixed by the caller."""
  real_logit = disc.apply({"params": d_params}, jnp.concatenate([c_BxV, c_BxV], axis=1))
  fake_logit = disc.apply({"params": d_params}, jnp.concatenate([c_BxV, fake_BxV], axis=1))
  return _bce_with_logits(real_logit, 1.0) + _bce_with_logits(fake_logit, 0.0) + reg_d * l2_half(d_params)


def generator_loss(gen: MLP, disc: MLP, g_params, d_params, c_BxV: Array, mask_BxV: Array,
                   zr_BxV: Array, alpha: float, reg_g: float) -> Array:
  """J^G (module doc) for one batch: mask = e_u + k_u (PM), zr = N^ZR_u indicator."""
  r_hat_BxV = gen.apply({"params": g_params}, c_BxV)
  fake_logit = disc.apply({"params": d_params}, jnp.concatenate([c_BxV, r_hat_BxV * mask_BxV], axis=1))
  zr_loss = jnp.mean(jnp.sum(jnp.square(r_hat_BxV) * zr_BxV, axis=1))
  return _bce_with_logits(fake_logit, 1.0) + alpha * zr_loss + reg_g * l2_half(g_params)
