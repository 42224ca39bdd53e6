"""Mult-VAE (Liang, Krishnan, Hoffman, Jebara: "Variational Autoencoders for Collaborative
Filtering", WWW 2018): a VAE over a user's click vector x_u with a multinomial likelihood.

Architecture [I -> 600 -> 200 -> 600 -> I] with tanh (the paper's and its notebook's, dawenl/vae_cf):
  x̃ = dropout_0.5(x / ||x||_2)                       (input dropout, training only)
  h = tanh(W_1 x̃ + b_1);  [μ, log σ²] = W_2 h + b_2    (encoder q(z | x), z ∈ R^200)
  z = μ + σ ⊙ ε, ε ~ N(0, I)   (training);   z = μ   (ranking)
  π(z) = softmax(W_4 tanh(W_3 z + b_3) + b_4)          (decoder)
Loss per user (the negative annealed ELBO, eq. 6 with β):
  -Σ_i x_ui log π_i(z)  +  β · KL(q(z|x) || N(0, I)),
  KL = ½ Σ_d (σ_d² + μ_d² - 1 - log σ_d²)
with β annealed linearly from 0 to β_max over `total_anneal_steps` updates (0.2 and 200,000 in
the paper; capped at β_max). Weights: Glorot-uniform; biases N(0, 0.001²) (the notebook). The
notebook's L2 weight `lam` is 0.0 for Mult-VAE, so there is no weight decay here.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array

_BIAS_INIT = nn.initializers.truncated_normal(0.001)


def _dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.glorot_uniform(), bias_init=_BIAS_INIT,
                  name=name)


class MultVAE(nn.Module):
  """Encoder/decoder MLPs; `__call__` -> (logits_BxI, mu_BxZ, logvar_BxZ)."""

  num_items: int
  hidden_dims: Sequence[int] = (600,)
  latent_dim: int = 200
  dropout: float = 0.5

  def setup(self):
    self.enc = [_dense(d, f"enc_{i}") for i, d in enumerate(self.hidden_dims)]
    self.enc_out = _dense(2 * self.latent_dim, "enc_out")
    self.dec = [_dense(d, f"dec_{i}") for i, d in enumerate(reversed(self.hidden_dims))]
    self.dec_out = _dense(self.num_items, "dec_out")
    self.drop = nn.Dropout(self.dropout)

  def encode(self, x_BxI: Array, deterministic: bool) -> tuple[Array, Array]:
    """q(z | x): (μ, log σ²), each [B, Z]."""
    # x̃ = dropout(x / ||x||_2)
    norm_B1 = jnp.sqrt(jnp.sum(jnp.square(x_BxI), axis=1, keepdims=True))
    h_BxH = self.drop(x_BxI / jnp.maximum(norm_B1, 1e-12), deterministic=deterministic)
    for layer in self.enc:
      h_BxH = jnp.tanh(layer(h_BxH))
    out_Bx2Z = self.enc_out(h_BxH)
    return out_Bx2Z[:, : self.latent_dim], out_Bx2Z[:, self.latent_dim :]

  def decode(self, z_BxZ: Array) -> Array:
    """Logits of π(z) (softmax over items). [B, I]"""
    h = z_BxZ
    for layer in self.dec:
      h = jnp.tanh(layer(h))
    return self.dec_out(h)

  def __call__(self, x_BxI: Array, deterministic: bool = True) -> tuple[Array, Array, Array]:
    mu_BxZ, logvar_BxZ = self.encode(x_BxI, deterministic)
    if deterministic:
      z_BxZ = mu_BxZ
    else:  # z = μ + σ ⊙ ε (reparameterisation)
      eps_BxZ = jax.random.normal(self.make_rng("sample"), mu_BxZ.shape, mu_BxZ.dtype)
      z_BxZ = mu_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ
    return self.decode(z_BxZ), mu_BxZ, logvar_BxZ


def multinomial_nll(logits_BxI: Array, x_BxI: Array) -> Array:
  """Mean over users of -Σ_i x_ui log softmax(logits)_i. Scalar."""
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits_BxI, axis=-1) * x_BxI, axis=-1))


def gaussian_kl(mu_BxZ: Array, logvar_BxZ: Array) -> Array:
  """Mean over users of KL(N(μ, σ²) || N(0, I)) = ½ Σ_d (σ² + μ² - 1 - log σ²). Scalar."""
  return jnp.mean(jnp.sum(0.5 * (jnp.exp(logvar_BxZ) + jnp.square(mu_BxZ) - 1.0 - logvar_BxZ), axis=-1))


def beta_schedule(step: Array | int, total_anneal_steps: int, beta_max: float) -> Array:
  """β = min(β_max, step / total_anneal_steps) (the paper's linear KL annealing)."""
  if total_anneal_steps <= 0:
    return jnp.asarray(beta_max, jnp.float32)
  return jnp.minimum(beta_max, jnp.asarray(step, jnp.float32) / total_anneal_steps)


def build_vae(cfg: ml_collections.ConfigDict, num_items: int) -> MultVAE:
  m = cfg.model
  return MultVAE(num_items=num_items, hidden_dims=tuple(m.hidden_dims), latent_dim=m.latent_dim,
                 dropout=m.dropout)
