"""HSTU on Amazon Beauty / Sports_and_Outdoors (the S3-Rec/P5 5-core files used by TIGER).

The ML-1M HSTU config (2 blocks, 1 head, dqk = dv = D = 50, dropout 0.2, sampled softmax with 128
negatives, τ = 0.05) with the Amazon sequence length of S3-Rec/TIGER, max_seq_len 50, and
  - no time bias: these files have no timestamps, only each user's order (the data loader uses
    positions as timestamps, and refuses an HSTU config that keeps the time bias on);
  - attn_norm_len 61: the reference's SiLU(.)/n with n = max_seq_len + 10 + 1, as 211 for 200.
Leave-one-out as in the published tables: train on all but each user's last two items, validate
on the second-to-last (best epoch by NDCG@10), test once on the last, ranking the full catalog.

Reproduce (data in $GENREC_DATA_DIR/amazon-beauty/ and amazon-sports/, see data/README.md):
  python -m experiments.hstu_amazon --workdir runs/hstu_beauty --config.data.dataset=amazon-beauty
  python -m experiments.hstu_amazon --workdir runs/hstu_sports --config.data.dataset=amazon-sports

No HSTU numbers are published on these splits, so `paper` is empty. The baseline to compare with
is the SASRec row of the TIGER paper (Rajput et al., NeurIPS 2023), as in sasrec_amazon.py:
  amazon-beauty  hr@5 0.0387  ndcg@5 0.0249  hr@10 0.0605  ndcg@10 0.0318
  amazon-sports  hr@5 0.0233  ndcg@5 0.0154  hr@10 0.0350  ndcg@10 0.0192
"""

from genrec_jax import cli, config, recipes


def get_config():
  c = config.sequential_config()
  c.experiment = "hstu_amazon"
  c.data.dataset = "amazon-beauty"
  c.data.max_seq_len = 50
  c.data.history_filter = "all"  # S3-Rec/TIGER rank against every item the user has not seen
  c.model.name = "hstu"
  c.model.attn_norm_len = 50 + 10 + 1
  c.model.use_time_bias = False
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
