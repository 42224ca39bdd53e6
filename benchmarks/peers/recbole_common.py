"""RecBole set-up shared by the peer scripts: ML-1M as an atomic file and the configs used.

RecBole reads `DATA_ROOT/ml-1m/ml-1m.inter`; `prepare_ml1m` writes it once from the project's
ratings.dat (all 1,000,209 ratings, no filtering, like genrec_jax). Nothing is downloaded.
"""

from __future__ import annotations

import os

import ml1m

DEFAULT_DATA_ROOT = "/work/scratch/D_peers/recbole_data"

# genrec_jax's protocol as close as RecBole allows: per user, time order, leave-one-out
# (second-to-last = valid, last = test), full ranking over all items (RecBole masks every
# past item of the user; genrec_jax masks the last max_seq_len).
LOO_FULL = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}

# SASRec presets. `matched` = the genrec_jax / generative-recommenders ML-1M SASRec shape (D=50,
# 2 blocks, 1 head, FFN 50 ReLU, dropout 0.2, N=200, B=128); `recbole` = RecBole's own defaults
# (properties/model/SASRec.yaml, overall.yaml) with N=50.
SASREC_PRESETS = {
    "matched": {"hidden_size": 50, "inner_size": 50, "n_layers": 2, "n_heads": 1,
                "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "relu",
                "layer_norm_eps": 1e-8, "MAX_ITEM_LIST_LENGTH": 200, "train_batch_size": 128},
    "recbole": {"MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 2048},
}


def prepare_ml1m(data_dir: str, data_root: str = DEFAULT_DATA_ROOT) -> str:
  """Writes DATA_ROOT/ml-1m/ml-1m.inter from data_dir/ml-1m/ratings.dat if missing; returns root."""
  path = os.path.join(data_root, "ml-1m", "ml-1m.inter")
  if not os.path.exists(path):
    ml1m.write_recbole_inter(ml1m.read_ratings(data_dir), path + ".tmp")
    os.replace(path + ".tmp", path)
  return data_root


def base_config(data_root: str, seed: int = 42) -> dict:
  """Config entries every run shares: CPU, our data, our split, full-softmax CE, no filters."""
  return {
      "data_path": data_root, "use_gpu": False, "worker": 0, "seed": seed, "reproducibility": True,
      "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
      "eval_args": LOO_FULL, "train_neg_sample_args": None, "loss_type": "CE",
      "metrics": ["Hit", "NDCG", "MRR"], "topk": [10, 50, 200], "valid_metric": "NDCG@10",
      "eval_batch_size": 256, "show_progress": False, "save_dataset": False,
      "checkpoint_dir": os.path.join(data_root, "saved"),
  }
