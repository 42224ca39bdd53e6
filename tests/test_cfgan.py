"""CFGAN (genrec_jax/models/cfgan.py): negative sampling, the D and G losses against NumPy, and a
CI-sized run of experiments/cfgan_movielens.py on real ML-100K (with an exact --resume check)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.models import cfgan


def test_sample_unobserved_exact_count_never_observed():
  rng = np.random.default_rng(0)
  obs = (rng.random((6, 40)) < 0.3).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 6)
  m = np.asarray(cfgan.sample_unobserved(keys, jnp.asarray(obs), 0.7))
  assert not np.any(m * obs)
  np.testing.assert_array_equal(m.sum(1), np.floor(0.7 * (obs == 0).sum(1)))
  np.testing.assert_array_equal(m, cfgan.sample_unobserved(keys, jnp.asarray(obs), 0.7))
  other = cfgan.sample_unobserved(jax.random.split(jax.random.key(1), 6), jnp.asarray(obs), 0.7)
  assert not np.array_equal(m, other)


def _bce(logit, y):
  p = 1 / (1 + np.exp(-logit))
  return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_losses_match_numpy():
  v = 9
  gen, disc = cfgan.MLP(5, 1, v), cfgan.MLP(4, 2, 1)
  g = gen.init(jax.random.key(0), jnp.zeros((1, v)))["params"]
  d = disc.init(jax.random.key(1), jnp.zeros((1, 2 * v)))["params"]
  rng = np.random.default_rng(2)
  c = (rng.random((3, v)) < 0.4).astype(np.float32)
  mask = np.maximum(c, (rng.random((3, v)) < 0.5)).astype(np.float32)
  zr = ((rng.random((3, v)) < 0.5) * (1 - c)).astype(np.float32)
  # G's forward pass by hand: sigmoid hidden layer, linear output
  r_hat = 1 / (1 + np.exp(-(c @ np.asarray(g["hidden_0"]["kernel"]) + np.asarray(g["hidden_0"]["bias"]))))
  r_hat = r_hat @ np.asarray(g["out"]["kernel"]) + np.asarray(g["out"]["bias"])
  np.testing.assert_allclose(gen.apply({"params": g}, c), r_hat, rtol=1e-5, atol=1e-6)
  dl = lambda x: np.asarray(disc.apply({"params": d}, x))  # noqa: E731
  l2 = lambda p: 0.5 * sum(float(np.sum(np.square(a))) for a in jax.tree_util.tree_leaves(p))  # noqa: E731
  fake = r_hat * mask
  want_d = _bce(dl(np.concatenate([c, c], 1)), 1) + _bce(dl(np.concatenate([c, fake], 1)), 0) + 0.01 * l2(d)
  got_d = cfgan.discriminator_loss(disc, d, jnp.asarray(c), jnp.asarray(fake), 0.01)
  np.testing.assert_allclose(got_d, want_d, rtol=1e-5)
  want_g = (_bce(dl(np.concatenate([c, fake], 1)), 1) + 0.03 * np.mean(np.sum(r_hat**2 * zr, 1))
            + 0.001 * l2(g))
  got_g = cfgan.generator_loss(gen, disc, g, d, jnp.asarray(c), jnp.asarray(mask), jnp.asarray(zr), 0.03, 0.001)
  np.testing.assert_allclose(got_g, want_g, rtol=1e-5)


def _small_config(epochs: int, mode: str = "item"):
  from experiments.cfgan_movielens import get_config

  cfg = get_config()
  cfg.model.mode = mode
  cfg.model.g_hidden_dim = 16
  cfg.model.d_hidden_dim = 8
  cfg.train.num_epochs = epochs
  cfg.train.eval_every = 1
  cfg.train.d_steps = 1
  cfg.train.g_steps = 1
  cfg.train.batch_size_d = 841  # 1682 items = 2 full batches: one compiled scan, no ragged step
  cfg.train.batch_size_g = 841
  return cfg


def test_experiment_smoke_and_exact_resume(tmp_path, data_dir):
  from genrec_jax.train import user_vectors

  full = user_vectors.run(_small_config(2), str(tmp_path / "full"), str(data_dir), False, False)
  saved = json.loads((tmp_path / "full" / "results.json").read_text())
  assert saved["protocol"] == "random" and saved["val"] is None and saved["selection"] == "last epoch"
  assert saved["test"]["num_users"] == 943 and saved["data_stats"]["items"] == 1682
  for k in ("precision@5", "precision@20", "ndcg@5", "ndcg@20"):
    assert 0.0 < saved["test"][k] <= 1.0
  # interrupted after epoch 1, resumed to 2: the same numbers as the uninterrupted run
  user_vectors.run(_small_config(1), str(tmp_path / "cut"), str(data_dir), False, False)
  resumed = user_vectors.run(_small_config(2), str(tmp_path / "cut"), str(data_dir), True, False)
  assert resumed["test"] == full["test"]
  with pytest.raises(FileExistsError):
    user_vectors.run(_small_config(2), str(tmp_path / "cut"), str(data_dir), False, False)
