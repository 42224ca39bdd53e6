"""YouTubeDNN candidate generation (Covington et al., RecSys 2016) on MovieLens-1M: the mean of
the last 50 watched (training) items' embeddings and the demographics through a ReLU MLP
(256 -> 64) give the user vector; a sampled softmax over 1,024 uniform negatives per step trains
it against the item output table, which is the item embedding used for retrieval.

Reproduce (leave-one-out, best epoch on validation NDCG@10):
  python -m experiments.youtubednn_movielens --workdir runs/youtubednn_ml1m
"""

from genrec_jax import cli
from genrec_jax.train import towers


def get_config():
  c = towers.tower_config()
  c.experiment = "youtubednn_movielens"
  c.model.name = "youtubednn"
  c.model.embed_dim = 64
  c.model.hidden_dims = (256,)
  c.loss.name = "softmax"
  c.loss.temperature = 1.0  # plain dot products, as the paper's softmax
  c.loss.in_batch = False  # the positive against sampled negatives only
  c.loss.logq = "none"  # (no in-batch candidates to correct)
  # K uniform negatives, each logit corrected by log(K/|C|): the loss's denominator
  # e^{s+} + (|C|/K) Σ_k e^{s_k} is the sampled estimate of the full softmax's.
  c.loss.num_uniform_negatives = 1024
  c.train.num_epochs = 30
  c.train.patience = 5
  return c


if __name__ == "__main__":
  cli.run(get_config, towers.run)
