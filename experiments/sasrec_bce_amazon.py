"""SASRec on Amazon Beauty / Sports trained as the original paper: BCE with one negative, dot product.

experiments/sasrec_amazon.py with the original SASRec's objective instead of our sampled softmax:
for each position, the next item (label 1) and one item drawn uniformly from the catalog (label 0),
logits = dot products of the layer-normed user state and raw item embeddings
(losses.bce_loss, model.score='dot'), positional embeddings of the SASRec code's left-padded
windows (model.positions='end': the newest event always at position N − 1), 201 epochs as the
SASRec code's default. This is the like-for-like row for the published SASRec numbers of the
TIGER table, which were trained this way.

  python -m experiments.sasrec_bce_amazon --workdir runs/sasrec_bce_beauty
  python -m experiments.sasrec_bce_amazon --workdir runs/sasrec_bce_sports --config.data.dataset=amazon-sports
"""

from genrec_jax import cli, recipes
from experiments import sasrec_amazon


def get_config():
  c = sasrec_amazon.get_config()
  c.experiment = "sasrec_bce_amazon"
  c.loss.name = "bce"
  c.loss.temperature = 1.0
  c.model.score = "dot"
  c.model.positions = "end"
  c.train.num_epochs = 201
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential_with_anchors(sasrec_amazon.PAPER_SASREC))
