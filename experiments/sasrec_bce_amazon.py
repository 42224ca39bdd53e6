"""SASRec on Amazon Beauty / Sports as S3-Rec trained it: BCE with one negative, dot product.

This is the like-for-like row for the published SASRec numbers of the TIGER table, which come from
S3-Rec's SASRec. It is experiments/sasrec_amazon.py with S3-Rec's objective and model:
- loss: for each position, the next item (label 1) and one item drawn uniformly from the catalog
  (label 0), logits = dot products of user state and item embeddings (losses.bce_loss,
  model.score='dot');
- model: S3-Rec's BERT layout (model.sasrec_block='post_ln': LN(E + P) input, post-LN blocks,
  GELU FFN, N(0, 0.02²) weights), D 64, 2 heads, FFN 256, dropout 0.5 everywhere, left-padded
  positions (model.positions='end': the newest event always at N − 1);
- training: batch 256 users, Adam lr 1e-3 with S3-Rec's β₂ 0.999 (our other experiments: 0.98),
  up to 201 epochs, patience 20 validations.

  python -m experiments.sasrec_bce_amazon --workdir runs/sasrec_bce_beauty
  python -m experiments.sasrec_bce_amazon --workdir runs/sasrec_bce_sports --config.data.dataset=amazon-sports

The original SASRec layout (pre-LN, D 50, FFN 50, batch 128) is `--config.model.sasrec_block=pre_ln
--config.model.embed_dim=50 --config.model.num_heads=1 --config.model.ffn_hidden_dim=50
--config.train.batch_size=128`. Measured figures for both: docs/results.md.
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
  c.model.sasrec_block = "post_ln"
  c.model.embed_dim = 64
  c.model.num_heads = 2
  c.model.ffn_hidden_dim = 256
  c.model.attn_dropout = 0.5
  c.train.batch_size = 256
  c.train.b2 = 0.999
  c.train.num_epochs = 201
  c.train.patience = 20
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential_with_anchors(sasrec_amazon.PAPER_SASREC))
