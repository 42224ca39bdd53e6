"""Shared config defaults (ml_collections). Experiments start from these and override fields.

Defaults are the generative-recommenders ML-1M research configs: AdamW(1e-3, β=(0.9, 0.98),
wd 0), batch 128, 101 epochs, dropout 0.2, sampled softmax with 128 uniform negatives per
position, τ = 0.05, max_seq_len 200.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value names something that does not exist or cannot work (e.g. an unknown model).

  The experiment CLI reports it as one `error:` line, like bad input data."""


def sequential_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.seed = 42

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-1m"
  c.data.protocol = "loo"  # 'loo' (train/val/test) or 'paper' (train/test, no validation)
  c.data.max_seq_len = 200
  c.data.download = False
  # Pack several users into one row of max_seq_len tokens (same loss, ~half the tokens on ML-1M).
  c.data.pack = True
  # Past items removed from the full ranking: 'window' = the max_seq_len items the model sees
  # (generative-recommenders), 'all' = every past item (S3-Rec / TIGER protocol on Amazon).
  c.data.history_filter = "window"
  # > 0: cold-start split: this fraction of the catalog (seeded by `seed`) is held out of training
  # entirely and reported separately as test targets (results.json: test_cold, test_warm).
  c.data.cold_start_frac = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "hstu"
  c.model.embed_dim = 50
  c.model.num_blocks = 2
  c.model.num_heads = 1
  c.model.dqk = 50
  c.model.dv = 50
  c.model.ffn_hidden_dim = 50  # SASRec only
  c.model.dropout = 0.2  # HSTU linear dropout / SASRec attention+FFN dropout
  c.model.input_dropout = 0.2
  # SiLU(.)/n uses the reference's padded length n = max_seq_len + gr_output_length(10) + 1.
  c.model.attn_norm_len = 211
  c.model.num_buckets = 128
  c.model.use_time_bias = True
  # Item vectors (input and output table): 'id' (learned table), 'text' (a learned projection of
  # frozen all-MiniLM-L6-v2 embeddings of the item text, data/text.py; MovieLens only) or
  # 'id+text' (both, combined by `fusion`: 'sum' | 'concat' | 'gate'). See models/sequential.py.
  c.model.item_features = "id"
  c.model.fusion = "sum"

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "sampled_softmax"  # or 'full_softmax'
  c.loss.num_negatives = 128
  c.loss.temperature = 0.05
  c.loss.impl = "gather"  # 'gather' | 'dense': two exact implementations, pick the faster

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 101
  c.train.learning_rate = 1e-3
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.weight_decay = 0.0
  c.train.patience = 0  # early stopping on val NDCG@10 after this many epochs without gain; 0 = off
  c.train.eval_batch_size = 256
  c.train.select_metric = "ndcg@10"
  # PRNG for dropout masks and negatives: 'threefry2x32' (JAX default) or 'rbg' (XLA's
  # RngBitGenerator: cheaper on CPU). Both are deterministic for a seed on a given backend.
  c.train.rng_impl = "threefry2x32"

  c.paper = ml_collections.ConfigDict()  # published test numbers, printed next to ours
  return c
