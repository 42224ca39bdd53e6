"""Sampled and full softmax losses (genrec_jax/losses.py) against NumPy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import losses

TAU = 0.05


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _problem(seed: int, b=3, n=5, d=8, v=20, k=6):
  """Unit user states, targets with unsupervised (0) positions, a catalog that skips some ids,
  and negative offsets that hit the target at several positions."""
  rng = np.random.default_rng(seed)
  user = _unit(rng.normal(size=(b, n, d)))
  table = _unit(rng.normal(size=(v, d)))
  table[0] = 0.0
  catalog = np.array([i for i in range(1, v) if i % 7 != 0])  # ids 7 and 14 are not candidates
  targets = rng.choice(catalog, (b, n))
  targets[0, 3:] = 0
  targets[2, 0] = 0
  offs = rng.integers(0, len(catalog), (b, n, k))
  position = {int(c): i for i, c in enumerate(catalog)}
  offs[0, 0, :3] = position[int(targets[0, 0])]  # three collisions with the target
  offs[1, 2, -1] = position[int(targets[1, 2])]
  return user, targets, table, catalog, offs


def np_sampled_softmax(user, targets, table, catalog, offs, tau):
  total, count = 0.0, 0
  b, n, _ = user.shape
  for i in range(b):
    for j in range(n):
      t = targets[i, j]
      if t == 0:
        continue
      pos = user[i, j] @ table[t] / tau
      logits = [pos]
      for o in offs[i, j]:
        neg = catalog[o]
        logits.append(-5e4 if neg == t else user[i, j] @ table[neg] / tau)
      logits = np.array(logits)
      m = logits.max()
      total += m + np.log(np.sum(np.exp(logits - m))) - pos
      count += 1
  return total / max(count, 1)


def np_full_softmax(user, targets, table, catalog, tau):
  total, count = 0.0, 0
  b, n, _ = user.shape
  for i in range(b):
    for j in range(n):
      t = targets[i, j]
      if t == 0:
        continue
      logits = np.array([user[i, j] @ table[c] / tau for c in catalog])
      m = logits.max()
      total += m + np.log(np.sum(np.exp(logits - m))) - user[i, j] @ table[t] / tau
      count += 1
  return total / max(count, 1)


def _jax(*arrays):
  return [jnp.asarray(a, jnp.float32 if a.dtype.kind == "f" else jnp.int32) for a in arrays]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_softmax_gather_dense_and_numpy_agree(seed):
  user, targets, table, catalog, offs = _problem(seed)
  want = np_sampled_softmax(user, targets, table, catalog, offs, TAU)
  args = _jax(user, targets, table, catalog, offs)
  gather = float(losses.sampled_softmax_loss(*args, TAU, impl="gather"))
  dense = float(losses.sampled_softmax_loss(*args, TAU, impl="dense"))
  assert abs(gather - dense) <= 1e-5 * max(1.0, abs(want))
  np.testing.assert_allclose(gather, want, rtol=1e-5)
  np.testing.assert_allclose(dense, want, rtol=1e-5)


def test_sampled_softmax_masks_negatives_equal_to_target():
  """With every negative equal to the target the loss is log(1 + K e^{-5e4 - pos}) ~ 0
  (unmasked, these negatives would score exactly like the positive: log(1 + K) = log 5)."""
  user, targets, table, catalog, offs = _problem(3, k=4)
  position = {int(c): i for i, c in enumerate(catalog)}
  offs = np.vectorize(lambda t: position.get(int(t), 0))(targets)[..., None].repeat(4, -1)
  for impl in ("gather", "dense"):
    loss = float(losses.sampled_softmax_loss(*_jax(user, targets, table, catalog, offs), TAU, impl=impl))
    assert 0.0 <= loss < 1e-6


def test_sampled_softmax_mean_over_supervised_positions_only():
  user, targets, table, catalog, offs = _problem(4)
  args = _jax(user, targets, table, catalog, offs)
  base = float(losses.sampled_softmax_loss(*args, TAU, impl="gather"))
  # changing the user state at an unsupervised position does not change the loss
  user2 = user.copy()
  user2[0, 4] = _unit(np.ones(8))
  args2 = _jax(user2, targets, table, catalog, offs)
  assert float(losses.sampled_softmax_loss(*args2, TAU, impl="gather")) == pytest.approx(base, abs=1e-7)
  # all positions unsupervised: zero, not NaN
  zero = _jax(user, np.zeros_like(targets), table, catalog, offs)
  for impl in ("gather", "dense"):
    assert float(losses.sampled_softmax_loss(*zero, TAU, impl=impl)) == 0.0


def test_sampled_softmax_gradients_gather_equal_dense():
  user, targets, table, catalog, offs = _problem(5)
  u, t, tb, c, o = _jax(user, targets, table, catalog, offs)

  def grads(impl):
    f = lambda u_, tb_: losses.sampled_softmax_loss(u_, t, tb_, c, o, TAU, impl=impl)
    return jax.grad(f, argnums=(0, 1))(u, tb)

  (gu_g, gt_g), (gu_d, gt_d) = grads("gather"), grads("dense")
  np.testing.assert_allclose(gu_g, gu_d, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(gt_g, gt_d, atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(gt_g)).max() > 1e-3  # the gradient is not trivially zero
  # no gradient flows into items that are neither targets nor sampled
  touched = set(targets.ravel()) | set(catalog[offs].ravel())
  untouched = [i for i in range(len(table)) if i not in touched]
  assert untouched and not np.asarray(gt_g)[untouched].any()


def test_sampled_softmax_unknown_impl():
  args = _jax(*_problem(6))
  with pytest.raises(ValueError, match="impl"):
    losses.sampled_softmax_loss(*args, TAU, impl="fast")


@pytest.mark.parametrize("seed", [0, 7])
def test_full_softmax_matches_numpy(seed):
  user, targets, table, catalog, _ = _problem(seed)
  got = float(losses.full_softmax_loss(*_jax(user, targets, table, catalog), TAU))
  np.testing.assert_allclose(got, np_full_softmax(user, targets, table, catalog, TAU), rtol=1e-5)


def test_sample_negatives_shape_and_range():
  offs = np.asarray(losses.sample_negatives(jax.random.key(0), (4, 5), 32, 11))
  assert offs.shape == (4, 5, 32)
  assert offs.min() >= 0 and offs.max() <= 10
  assert len(np.unique(offs)) == 11  # 640 draws over 11 values hit all of them
  again = np.asarray(losses.sample_negatives(jax.random.key(0), (4, 5), 32, 11))
  np.testing.assert_array_equal(offs, again)


def test_bce_loss_matches_numpy_with_target_collisions():
  rng = np.random.default_rng(3)
  b, n, d, v = 3, 5, 4, 9
  user = rng.normal(size=(b, n, d)).astype(np.float32)
  table = rng.normal(size=(v, d)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, n))
  targets[0, :2] = 0  # unsupervised positions
  neg = rng.integers(1, v, size=(b, n))
  neg[1, 1] = targets[1, 1]  # a collision: no negative term there
  tau = 0.5
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  total, count = 0.0, 0
  for i in range(b):
    for t in range(n):
      if targets[i, t] == 0:
        continue
      pos = user[i, t] @ table[targets[i, t]] / tau
      term = -np.log(sig(pos))
      if neg[i, t] != targets[i, t]:
        term += -np.log(1.0 - sig(user[i, t] @ table[neg[i, t]] / tau))
      total, count = total + term, count + 1
  got = losses.bce_loss(jnp.asarray(user), jnp.asarray(targets), jnp.asarray(table), jnp.asarray(neg), tau)
  np.testing.assert_allclose(float(got), total / count, rtol=1e-5)
