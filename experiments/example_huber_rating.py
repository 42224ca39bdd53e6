"""Example (docs/extending.md): a new loss in a short experiment — Huber instead of MSE for ratings.

  python -m experiments.example_huber_rating --workdir runs/huber --config.train.num_epochs=1
"""

import optax

from experiments import genre_multitask_movielens as base
from genrec_jax import cli
from genrec_jax.train import multitask


def huber_loss(out, batch, key, cfg, catalog_C):
  """Huber(r̂ − r, δ = 1 star), averaged over the positions whose next rating is known."""
  err_BxN = out["rating_BxN"] - multitask.target_rating(batch)
  return multitask.weighted_mean(optax.huber_loss(err_BxN, delta=1.0), multitask.rating_weights(batch))


multitask.register_loss("rating", "huber", huber_loss)


def get_config():
  c = base.get_config()  # ML-1M, HSTU encoder, all heads on
  c.experiment = "example_huber_rating"
  c.tasks.rating.loss = "huber"  # the new loss, by name
  c.tasks.liked.on = False
  return c


if __name__ == "__main__":
  cli.run(get_config, multitask.run)
