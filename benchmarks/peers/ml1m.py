"""MovieLens-1M for the peer benchmarks, read with NumPy only (the peers' venv has no genrec_jax).

Same sequences as genrec_jax's loader: each user's ratings in time order (ties kept in file order),
item ids not remapped (vocab = 3952 + 1, 0 = PAD), leave-one-out: train on all but the last two
items, validate on the second-to-last, test on the last.
"""

from __future__ import annotations

import os

import numpy as np


def read_ratings(data_dir: str) -> np.ndarray:
  """int64 [R, 4] rows (user, item, rating, timestamp) of `data_dir/ml-1m/ratings.dat`."""
  path = os.path.join(data_dir, "ml-1m", "ratings.dat")
  with open(path, "rb") as f:
    text = f.read().replace(b"::", b" ")
  return np.fromstring(text, dtype=np.int64, sep=" ").reshape(-1, 4)


def user_sequences(ratings: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per user (ascending id): item ids and timestamps in time order, ties in file order."""
  order = np.lexsort((np.arange(len(ratings)), ratings[:, 3], ratings[:, 0]))
  r = ratings[order]
  starts = np.flatnonzero(np.r_[True, r[1:, 0] != r[:-1, 0]])
  items = np.split(r[:, 1], starts[1:])
  times = np.split(r[:, 3], starts[1:])
  return items, times


def train_examples(
    items: list[np.ndarray], times: list[np.ndarray], max_seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """torch-rechub's layout of the leave-one-out training part (all but the last two items).

  Per user, the last max_seq_len + 1 training items: the first max_seq_len are the input,
  left-padded with 0, the last is the held-out target; time_diffs = target time - item time
  (seconds, 0 at PAD), the anchor torch-rechub's HSTUModel expects. Returns
  (tokens_UxN, time_diffs_UxN, targets_U).
  """
  n_users = len(items)
  tokens_UxN = np.zeros((n_users, max_seq_len), np.int64)
  tdiff_UxN = np.zeros((n_users, max_seq_len), np.int64)
  targets_U = np.zeros((n_users,), np.int64)
  for u, (it, ts) in enumerate(zip(items, times)):
    it, ts = it[:-2][-(max_seq_len + 1):], ts[:-2][-(max_seq_len + 1):]
    n = len(it) - 1
    tokens_UxN[u, max_seq_len - n:] = it[:-1]
    tdiff_UxN[u, max_seq_len - n:] = ts[-1] - ts[:-1]
    targets_U[u] = it[-1]
  return tokens_UxN, tdiff_UxN, targets_U


def batch_rows(num_users: int, batch_size: int, seed: int, num_batches: int) -> list[np.ndarray]:
  """Row indices of `num_batches` shuffled full batches (a new permutation each epoch)."""
  rng = np.random.default_rng(seed)
  out: list[np.ndarray] = []
  while len(out) < num_batches:
    perm = rng.permutation(num_users)
    out += [perm[i:i + batch_size] for i in range(0, num_users - batch_size + 1, batch_size)]
  return out[:num_batches]


def write_recbole_inter(ratings: np.ndarray, path: str) -> None:
  """ratings as a RecBole atomic `.inter` file (user_id, item_id, rating, timestamp)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    np.savetxt(f, ratings, fmt="%d", delimiter="\t")
