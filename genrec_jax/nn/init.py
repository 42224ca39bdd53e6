"""Initialisers that match PyTorch defaults where the reference relies on them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def torch_linear_bias(fan_in: int):
  """U(-1/√fan_in, 1/√fan_in): torch.nn.Linear / Conv1d default bias init."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
