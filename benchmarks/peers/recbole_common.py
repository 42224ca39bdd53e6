"""RecBole set-up shared by the peer scripts: the datasets as atomic files and the configs used.

RecBole reads `DATA_ROOT/NAME/NAME.inter`; `prepare` writes it once from the project's files:
ML-1M from ratings.dat (all 1,000,209 ratings, no filtering, like genrec_jax); Amazon Beauty /
Sports from the S3-Rec/P5 `<name>.txt` (one user per line, items in time order, no timestamps: each
item's position in its user's line is written as its timestamp, so RecBole's time order is the
file's order). Nothing is downloaded.
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


AMAZON_FILES = {"amazon-beauty": "Beauty.txt", "amazon-sports": "Sports_and_Outdoors.txt"}
DATASETS = ("ml-1m", *AMAZON_FILES)


def prepare(dataset: str, data_dir: str, data_root: str = DEFAULT_DATA_ROOT) -> str:
  """Writes DATA_ROOT/<dataset>/<dataset>.inter once (see the module doc); returns DATA_ROOT."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
  path = os.path.join(data_root, dataset, f"{dataset}.inter")
  if not os.path.exists(path):
    if dataset == "ml-1m":
      ml1m.write_recbole_inter(ml1m.read_ratings(data_dir), path + ".tmp")
    else:
      _write_amazon_inter(os.path.join(data_dir, dataset, AMAZON_FILES[dataset]), path + ".tmp")
    os.replace(path + ".tmp", path)
  return data_root


def _write_amazon_inter(src: str, path: str) -> None:
  """One `user item item ...` line per user -> (user, item, position in the line) rows."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(src) as f, open(path, "w") as out:
    out.write("user_id:token\titem_id:token\ttimestamp:float\n")
    for line in f:
      user, *items = line.split()
      out.writelines(f"{user}\t{item}\t{t}\n" for t, item in enumerate(items))


def base_config(data_root: str, seed: int = 42, dataset: str = "ml-1m") -> dict:
  """Config entries every run shares: CPU, our data, our split, full-softmax CE, no filters."""
  columns = ["user_id", "item_id", "timestamp"]  # the Amazon files have no ratings
  if dataset == "ml-1m":
    columns.insert(2, "rating")
  return {
      "data_path": data_root, "use_gpu": False, "worker": 0, "seed": seed, "reproducibility": True,
      "load_col": {"inter": columns},
      "eval_args": LOO_FULL, "train_neg_sample_args": None, "loss_type": "CE",
      "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10, 50, 200], "valid_metric": "NDCG@10",
      "eval_batch_size": 256, "show_progress": False, "save_dataset": False,
      "checkpoint_dir": os.path.join(data_root, "saved"),
  }
