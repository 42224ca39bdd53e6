"""Sampled-item scores out[m, k] = <u[m], E[ids[m, k]]>: all rows gathered at once vs in chunks.

  taskset -c 0 python -m benchmarks.gather_scores [--tokens 8000] [--negatives 128] [--dim 50]

(one core: the trainer runs one host device per core, each with half of the batch's tokens.)

Times forward + backward (gradients for u and E) of Σ g ⊙ out, jitted, on one host device:
'at once' is plain JAX (E[ids] then a batched dot; autodiff scatter-adds the [M·K, D] rows),
'chunk=T' is catalog_scores.catalog_gather_dot with T tokens per chunk. Prints one JSON line
per variant with the median of --repeats runs and the largest gradient difference from 'at once'.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_integer("tokens", 8000, "M: tokens (one device's share of a packed ML-1M batch).")
flags.DEFINE_integer("negatives", 128, "K: sampled items per token.")
flags.DEFINE_integer("dim", 50, "D.")
flags.DEFINE_integer("items", 3884, "Table rows.")
flags.DEFINE_integer("repeats", 10, "Timed runs per variant.")
flags.DEFINE_multi_integer("chunk", [16, 64, 256], "Tokens per chunk for catalog_gather_dot.")


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1000 * float(np.median(times))


def main(argv) -> None:
  del argv
  from genrec_jax.catalog_scores import catalog_gather_dot

  f = flags.FLAGS
  r = np.random.default_rng(0)
  u = jnp.asarray(r.standard_normal((f.tokens, f.dim)), jnp.float32)
  e = jnp.asarray(r.standard_normal((f.items, f.dim)), jnp.float32)
  ids = jnp.asarray(r.integers(0, f.items, (f.tokens, f.negatives)), jnp.int32)
  g = jnp.asarray(r.standard_normal((f.tokens, f.negatives)), jnp.float32)

  def at_once(u, e):
    return jnp.sum(jnp.einsum("md,mkd->mk", u, e[ids]) * g)

  variants = {"at once": at_once}
  for c in f.chunk:
    variants[f"chunk={c}"] = lambda u, e, c=c: jnp.sum(catalog_gather_dot(u, e, ids, c) * g)
  ref = None
  for name, loss in variants.items():
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    _, grads = grad(u, e)
    ref = grads if ref is None else ref
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads, ref))
    ms = _median_ms(grad, u, e, repeats=f.repeats)
    print(json.dumps({"variant": name, "fwd_bwd_ms_median": round(ms, 2), "max_grad_diff": diff,
                      "tokens": f.tokens, "negatives": f.negatives, "dim": f.dim, "items": f.items,
                      "devices": jax.device_count()}))


if __name__ == "__main__":
  app.run(main)
