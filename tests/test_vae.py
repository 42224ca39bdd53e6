"""Mult-VAE (genrec_jax/models/vae.py): likelihood, KL and β schedule against NumPy, the model's
shapes, and a CI-sized run of experiments/multvae_movielens.py on real ML-100K."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.models import vae


def test_multinomial_nll_and_kl_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 7))
  x = (rng.random((4, 7)) < 0.4).astype(np.float64)
  log_pi = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  want_nll = -np.mean((log_pi * x).sum(1))
  np.testing.assert_allclose(vae.multinomial_nll(jnp.asarray(logits), jnp.asarray(x)), want_nll, rtol=1e-5)
  mu, logvar = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  # KL(N(μ, σ²) || N(0, 1)) per dimension: log(1/σ) + (σ² + μ²)/2 - 1/2
  sigma = np.exp(0.5 * logvar)
  want_kl = np.mean((np.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5).sum(1))
  np.testing.assert_allclose(vae.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar)), want_kl, rtol=1e-5)


def test_beta_schedule_is_linear_then_capped():
  got = [float(vae.beta_schedule(s, 1000, 0.2)) for s in (0, 100, 200, 5000)]
  np.testing.assert_allclose(got, [0.0, 0.1, 0.2, 0.2], rtol=1e-6)
  assert float(vae.beta_schedule(7, 0, 0.3)) == pytest.approx(0.3)


def test_model_shapes_and_deterministic_ranking():
  model = vae.MultVAE(num_items=11, hidden_dims=(8,), latent_dim=3)
  x = (jax.random.uniform(jax.random.key(0), (5, 11)) < 0.5).astype(jnp.float32)
  params = model.init({"params": jax.random.key(1)}, x)["params"]
  assert params["enc_0"]["kernel"].shape == (11, 8) and params["enc_out"]["kernel"].shape == (8, 6)
  assert params["dec_0"]["kernel"].shape == (3, 8) and params["dec_out"]["kernel"].shape == (8, 11)
  logits, mu, logvar = model.apply({"params": params}, x)
  assert logits.shape == (5, 11) and mu.shape == logvar.shape == (5, 3)
  # ranking uses z = μ: the decoder of μ, whatever the input scale (x is L2-normalised)
  np.testing.assert_allclose(logits, model.apply({"params": params}, mu, method=model.decode), rtol=1e-5)
  np.testing.assert_allclose(model.apply({"params": params}, 3.0 * x)[0], logits, rtol=1e-4, atol=1e-5)
  train_logits, _, _ = model.apply({"params": params}, x, deterministic=False,
                                   rngs={"dropout": jax.random.key(2), "sample": jax.random.key(3)})
  assert not np.allclose(train_logits, logits)  # dropout and z sampling are on in training


@pytest.mark.parametrize("protocol,overrides", [
    ("strong", {"data.num_heldout_users": 100}),
    ("loo", {}),
])
def test_experiment_smoke_ml100k(tmp_path, data_dir, protocol, overrides):
  from experiments.multvae_movielens import get_config
  from genrec_jax.train import user_vectors

  cfg = get_config()
  cfg.data.dataset = "ml-100k"
  cfg.data.protocol = protocol
  cfg.train.num_epochs = 2
  cfg.model.hidden_dims = (32,)
  cfg.model.latent_dim = 8
  for k, v in overrides.items():
    section, leaf = k.split(".")
    cfg[section][leaf] = v
  out = user_vectors.run(cfg, str(tmp_path), str(data_dir), resume=False, eval_only=False)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["protocol"] == protocol and saved["experiment"] == "multvae_movielens"
  keys = ("recall@20", "recall@50", "ndcg@100") if protocol == "strong" else ("hr@10", "ndcg@10")
  for split in ("val", "test"):
    for k in keys:
      assert 0.0 < saved[split][k] <= 1.0
  assert saved["test"] == out["test"]
  if protocol == "loo":
    assert saved["test"]["num_users"] == 943
