"""SASRec on MovieLens-1M, the generative-recommenders baseline config (2 blocks, 1 head, D = 50,
FFN 50 ReLU, dropout 0.2, sampled softmax with 128 negatives, τ = 0.05).

Reproduce the table row (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.sasrec_movielens --workdir runs/sasrec_ml1m
"""

from genrec_jax import cli, config, recipes

PAPER_ML1M_SASREC = {"hr@10": 0.2853, "ndcg@10": 0.1603, "hr@50": 0.5474, "ndcg@50": 0.2185,
                     "hr@200": 0.7528, "ndcg@200": 0.2498}


def get_config():
  c = config.sequential_config()
  c.experiment = "sasrec_movielens"
  c.model.name = "sasrec"
  c.model.ffn_hidden_dim = 50
  c.paper.update(PAPER_ML1M_SASREC)
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
