"""HSTU on MovieLens-1M with the paper's ML-1M config (2 blocks, 1 head, dqk = dv = D = 50).

Reproduce the table row (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.hstu_movielens --workdir runs/hstu_ml1m
The reference's own protocol (train on all but the last item, test on the last, no validation):
  python -m experiments.hstu_movielens --workdir runs/hstu_ml1m_paper --config.data.protocol=paper
"""

from genrec_jax import cli, config, recipes

PAPER_ML1M_HSTU = {"hr@10": 0.3097, "ndcg@10": 0.1720, "hr@50": 0.5754, "ndcg@50": 0.2307,
                   "hr@200": 0.7716, "ndcg@200": 0.2606}


def get_config():
  c = config.sequential_config()
  c.experiment = "hstu_movielens"
  c.model.name = "hstu"
  c.paper.update(PAPER_ML1M_HSTU)
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
