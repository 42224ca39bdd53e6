"""Mult-VAE (Liang et al., WWW 2018) on MovieLens: [I -> 600 -> 200 -> 600 -> I], tanh, input
dropout 0.5, multinomial likelihood, β annealed to 0.2 over 200,000 updates, Adam 1e-3, batch 500,
200 epochs, best epoch by validation NDCG@100 (strong) or NDCG@10 (loo).

Protocols (genrec_jax/data/interactions.py):
  strong (default, the paper's): ratings >= 4 are clicks, users with >= 5 clicks, 600 validation
         and 600 test users held out (ML-1M has ~6k users; the paper holds out 10k of ML-20M's
         136k), 20% of each held-out user's clicks to predict from the other 80%. Metrics:
         recall@20, recall@50 (normalised by min(K, #held-out)), ndcg@100.
  loo    our sequential leave-one-out split (same users and targets as HSTU/SASRec, all past items
         filtered): hr@k, ndcg@k, mrr.

Reproduce:
  python -m experiments.multvae_movielens --workdir runs/multvae_ml1m_strong
  python -m experiments.multvae_movielens --workdir runs/multvae_ml1m_loo --config.data.protocol=loo
"""

import ml_collections

from genrec_jax import cli
from genrec_jax.train import user_vectors

# Liang et al. 2018, Table 2 (ML-20M, strong generalisation, 10k held-out users). No ML-1M row.
PAPER_ML20M_MULTVAE = {"recall@20": 0.395, "recall@50": 0.537, "ndcg@100": 0.426}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "multvae_movielens"
  c.seed = 98765  # the notebook's seed (it also seeds the strong split: data.split_seed)

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-1m"
  c.data.protocol = "strong"  # 'strong' | 'loo'
  c.data.download = False
  c.data.num_heldout_users = 600  # strong: validation users = test users = this many
  c.data.split_seed = 98765
  c.data.min_rating = 3.5  # strong: ratings above this are clicks (ML-1M: 4 and 5 stars)

  c.model = ml_collections.ConfigDict()
  c.model.name = "multvae"
  c.model.hidden_dims = (600,)
  c.model.latent_dim = 200
  c.model.dropout = 0.5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 500
  c.train.num_epochs = 200
  c.train.learning_rate = 1e-3
  c.train.beta_max = 0.2
  c.train.total_anneal_steps = 200_000
  c.train.eval_batch_size = 500
  c.train.eval_every = 1
  c.train.select_metric = ""  # '' = ndcg@100 (strong) / ndcg@10 (loo)

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (20, 50, 100)  # strong: recall@k, precision@k, ndcg@k for each k

  c.paper = ml_collections.ConfigDict(PAPER_ML20M_MULTVAE)
  return c


if __name__ == "__main__":
  cli.run(get_config, user_vectors.run)
