"""HSTU-large on MovieLens-1M (8 blocks, 2 heads, dqk = dv = 25, D = 50), the paper's large config.

Reproduce the table row (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.hstu_large_movielens --workdir runs/hstu_large_ml1m
"""

from experiments import hstu_movielens
from genrec_jax import cli, recipes

PAPER_ML1M_HSTU_LARGE = {"hr@10": 0.3294, "ndcg@10": 0.1893, "hr@50": 0.5935, "ndcg@50": 0.2481,
                         "hr@200": 0.7839, "ndcg@200": 0.2771}


def get_config():
  c = hstu_movielens.get_config()
  c.experiment = "hstu_large_movielens"
  c.model.num_blocks = 8
  c.model.num_heads = 2
  c.model.dqk = 25
  c.model.dv = 25
  c.paper.update(PAPER_ML1M_HSTU_LARGE)
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
