"""SASRec on Amazon Beauty / Sports_and_Outdoors (the S3-Rec/P5 5-core files used by TIGER).

SASRec paper settings for the Amazon datasets (Kang & McAuley, ICDM 2018: max length 50, dropout
0.5, 2 blocks, 1 head, D = 50, Adam 1e-3, batch 128); the loss is the one of our MovieLens runs
(sampled softmax, 128 negatives, τ = 0.05). Leave-one-out as in the published tables: train on
all but each user's last two items, validate on the second-to-last (best epoch by NDCG@10), test
once on the last, ranking the full catalog.

Reproduce (data in $GENREC_DATA_DIR/amazon-beauty/ and amazon-sports/, see data/README.md):
  python -m experiments.sasrec_amazon --workdir runs/sasrec_beauty --config.data.dataset=amazon-beauty
  python -m experiments.sasrec_amazon --workdir runs/sasrec_sports --config.data.dataset=amazon-sports

The table printed at the end compares against PAPER_SASREC[dataset], the SASRec row of the TIGER
paper (Rajput et al., NeurIPS 2023; the row comes from the S3-Rec/P5 line of work):
  amazon-beauty  hr@5 0.0387  ndcg@5 0.0249  hr@10 0.0605  ndcg@10 0.0318
  amazon-sports  hr@5 0.0233  ndcg@5 0.0154  hr@10 0.0350  ndcg@10 0.0192
get_config() holds the Beauty numbers (the default dataset); the recipe swaps in the numbers of
the dataset actually run, since --config overrides are applied after get_config().
"""

from genrec_jax import cli, config, recipes

PAPER_SASREC = {
    "amazon-beauty": {"hr@5": 0.0387, "ndcg@5": 0.0249, "hr@10": 0.0605, "ndcg@10": 0.0318},
    "amazon-sports": {"hr@5": 0.0233, "ndcg@5": 0.0154, "hr@10": 0.0350, "ndcg@10": 0.0192},
}


def get_config():
  c = config.sequential_config()
  c.experiment = "sasrec_amazon"
  c.data.dataset = "amazon-beauty"
  c.data.max_seq_len = 50
  c.data.history_filter = "all"  # S3-Rec/TIGER rank against every item the user has not seen
  c.model.name = "sasrec"
  c.model.ffn_hidden_dim = 50
  c.model.dropout = 0.5
  c.model.input_dropout = 0.5
  c.paper.update(PAPER_SASREC["amazon-beauty"])
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential_with_anchors(PAPER_SASREC))
