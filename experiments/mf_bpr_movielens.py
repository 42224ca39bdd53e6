"""MF-BPR (Rendle et al., UAI 2009) on MovieLens-1M: user and item embeddings (D = 64) plus an
item bias, BPR with one negative per (user, item) drawn from the items the user has not seen,
Adam; our leave-one-out full ranking.

Reproduce (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.mf_bpr_movielens --workdir runs/mf_bpr_ml1m
Amazon Beauty (the same model; no user features are used by MF):
  python -m experiments.mf_bpr_movielens --workdir runs/mf_bpr_beauty --config.data.dataset=amazon-beauty
"""

from genrec_jax import cli
from genrec_jax.train import towers


def get_config():
  c = towers.tower_config()
  c.experiment = "mf_bpr_movielens"
  c.model.name = "mf_bpr"
  c.model.embed_dim = 64
  c.model.use_bias = True
  c.loss.name = "bpr"
  c.loss.l2_reg = 1e-4
  c.train.num_epochs = 40
  c.train.patience = 5
  return c


if __name__ == "__main__":
  cli.run(get_config, towers.run)
