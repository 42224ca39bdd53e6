"""Two-tower retrieval (Yi et al., RecSys 2019) on MovieLens-1M: user tower over demographics
(gender, age, occupation, zip prefix) + the mean of the last 50 training items, item tower over
the item id + its genres; L2-normalised outputs, τ = 0.05, in-batch softmax with logQ correction.

Reproduce (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.two_tower_movielens --workdir runs/two_tower_ml1m
  python -m experiments.two_tower_movielens --workdir runs/two_tower_ml1m_nologq --config.loss.logq=none
  python -m experiments.two_tower_movielens --workdir runs/two_tower_ml1m_streaming --config.loss.logq=streaming
Mixed negative sampling (Yang et al., WWW 2020: + 1024 uniform negatives with their own logQ):
  python -m experiments.two_tower_movielens --workdir runs/two_tower_ml1m_mns --config.loss.num_uniform_negatives=1024
Amazon Beauty (item attributes as item features, no user features):
  python -m experiments.two_tower_movielens --workdir runs/two_tower_beauty --config.data.dataset=amazon-beauty
"""

from genrec_jax import cli
from genrec_jax.train import towers


def get_config():
  c = towers.tower_config()
  c.experiment = "two_tower_movielens"
  c.model.name = "two_tower"
  c.model.embed_dim = 64
  c.model.hidden_dims = (256,)
  c.loss.name = "softmax"
  c.loss.temperature = 0.05
  c.loss.in_batch = True
  c.loss.logq = "empirical"  # 'empirical' | 'streaming' | 'none'
  c.loss.num_uniform_negatives = 0  # > 0: mixed negative sampling
  c.train.num_epochs = 30
  c.train.patience = 5
  return c


if __name__ == "__main__":
  cli.run(get_config, towers.run)
