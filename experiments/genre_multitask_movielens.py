"""GENRE-style multi-task hybrid on MovieLens-1M: one HSTU encoder, heads for next-item retrieval,
rating regression (1–5) and 'liked' (rating >= 4), optional MF (CF) tower blended into retrieval.

Heads and their loss weights are switched with --config.tasks.<retrieval|rating|liked>.{on,weight};
the CF tower with --config.cf.on (blend 'learned' or 'fixed', --config.cf.weight). See
genrec_jax/train/multitask.py for the losses and metrics. Single-task vs multi-task (docs/multitask.md
has the table; it used --data_dir ../shared/data --config.train.num_epochs=40 for every row):
  retrieval only: python -m experiments.genre_multitask_movielens --workdir runs/mt_retrieval \
                    --config.tasks.rating.on=False --config.tasks.liked.on=False
  rating only:    python -m experiments.genre_multitask_movielens --workdir runs/mt_rating \
                    --config.tasks.retrieval.on=False --config.tasks.liked.on=False
  liked only:     python -m experiments.genre_multitask_movielens --workdir runs/mt_liked \
                    --config.tasks.retrieval.on=False --config.tasks.rating.on=False
  multi-task:     python -m experiments.genre_multitask_movielens --workdir runs/mt_all
  multi-task + CF tower: python -m experiments.genre_multitask_movielens --workdir runs/mt_all_cf \
                    --config.cf.on=True
"""

from genrec_jax import cli, config
from genrec_jax.train import multitask


def get_config():
  c = multitask.multitask_fields(config.sequential_config())
  c.experiment = "genre_multitask_movielens"
  c.data.dataset = "ml-1m"
  c.model.name = "hstu"
  c.tasks.retrieval.weight = 1.0  # sampled softmax, ≈ 5–7 nats early on
  c.tasks.rating.weight = 1.0  # MSE in stars², ≈ 0.8 once fitted
  c.tasks.liked.weight = 1.0  # BCE, ≈ 0.6
  return c


if __name__ == "__main__":
  cli.run(get_config, multitask.run)
