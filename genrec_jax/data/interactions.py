"""Per-user binary interaction matrices for models that read a user's whole item set at once
(Mult-VAE, CFGAN, MF-BPR, two-tower), plus the evaluation sets they are scored on.

Every protocol gives one `InteractionData`:
  train_UxI   scipy.sparse CSR float32 0/1 [num_train_users, num_items]: what training sees
  items_I     original item id of each column (column j <-> item items_I[j])
  val / test  `HeldOut` evaluation users, each with
                fold_in_UxI  the items the model is given for the user (its input at ranking)
                target_UxI   the items it must rank high (one per user for leave-one-out)
                exclude_UxI  the items removed from the ranking (the user's known history)
                user_U       original user ids;  train_row_U  the user's row in train_UxI or -1

Protocols (`PROTOCOLS`):
  loo     Our sequential leave-one-out split (`registry.load_task` -> `sequences.make_split` with
          history_filter='all'): same users, same val/test targets as HSTU/SASRec. Columns are the
          whole catalog (every movie of movies.dat on MovieLens), so rankings cover the same
          candidates. Train = each user's events but the last two; val: fold-in = train events,
          target = second-to-last; test: fold-in = every event before the last, target = last.
          The ranking removes every fold-in (= past) item, as history_filter='all'.
  paper   The same without a validation split (train = all but the last event).
  strong  Strong generalisation (Liang et al., WWW 2018, dawenl/vae_cf notebook): ratings
          > `min_rating` (3.5: ML-20M's >= 4 stars; on integer-star ML-1M the same as >= 4) are
          clicks; users with >= `min_user_clicks` (5) clicks; users shuffled (seeded) and
          `num_heldout_users` each held out for validation and test; columns = the items the
          training users clicked (held-out users' other items are dropped); each held-out user
          with >= 5 such items has int(0.2 n) of them drawn (seeded, without replacement) as
          targets, the rest is fold-in. Held-out users left with no target are dropped (the
          notebook would divide by zero on them).
  random  Each user's items split at random (seeded) into train (80%) and test (20%), as CFGAN's
          (Chae et al., CIKM 2018) evaluation: fold-in = the user's train row, no validation.

All random draws use `numpy.random.default_rng(seed)`, so splits are reproducible but are not
the notebook's exact users (it used the legacy np.random global state).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
import scipy.sparse as sp

from genrec_jax.config import ConfigError

PROTOCOLS = ("loo", "paper", "strong", "random")


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Evaluation users: what the model reads, what it must predict, what the ranking filters."""

  fold_in_UxI: sp.csr_matrix  # float32 0/1
  target_UxI: sp.csr_matrix  # float32 0/1, >= 1 item per row
  exclude_UxI: sp.csr_matrix  # float32 0/1
  user_U: np.ndarray  # int64 original user ids
  train_row_U: np.ndarray  # int64 row of the user in train_UxI, -1 if not a training user

  def __len__(self) -> int:
    return self.target_UxI.shape[0]


@dataclasses.dataclass(frozen=True)
class InteractionData:
  """Training matrix and evaluation sets of one protocol (module doc)."""

  train_UxI: sp.csr_matrix  # float32 0/1 [num_train_users, num_items]
  train_user_U: np.ndarray  # int64 original user id of each training row
  items_I: np.ndarray  # int64 original item id of each column
  val: HeldOut | None
  test: HeldOut
  protocol: str

  @property
  def num_items(self) -> int:
    return len(self.items_I)

  @property
  def num_train_users(self) -> int:
    return self.train_UxI.shape[0]


def binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
  """0/1 float32 CSR with a 1 at every (row, col) pair (duplicates collapse to 1)."""
  rows = np.asarray(rows, np.int64)
  cols = np.asarray(cols, np.int64)
  m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
  m.sum_duplicates()
  m.data[:] = 1.0
  m.sort_indices()
  return m


def dense_rows(m: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
  """The given rows of a CSR matrix as a dense float32 array [len(rows), num_cols]."""
  return np.asarray(m[rows].toarray(), np.float32)


# ---------------------------------------------------------------- leave-one-out (sequential) ----


def _padded_to_csr(ids_UxH: np.ndarray, col_of_id: np.ndarray, num_items: int) -> sp.csr_matrix:
  """Rows of 0-padded item ids -> binary CSR over catalog columns."""
  r, c = np.nonzero(ids_UxH)
  return binary_csr(r, col_of_id[ids_UxH[r, c]], (ids_UxH.shape[0], num_items))


def from_split(split, catalog: np.ndarray) -> InteractionData:
  """InteractionData of a sequential `sequences.Split` built with history_filter='all'.

  Rows are the split's users (all of them are training users), columns the catalog. The
  examples' `past_UxH` (every item before the target) is both the fold-in and the exclusion set.
  """
  if split.test.past_UxH is None:
    raise ValueError("from_split needs a split made with history_filter='all' (past_UxH)")
  catalog = np.asarray(catalog, np.int64)
  col_of_id = np.full(int(catalog.max()) + 1, -1, np.int64)
  col_of_id[catalog] = np.arange(len(catalog))
  n_items = len(catalog)

  def held_out(ex) -> HeldOut:
    past = _padded_to_csr(ex.past_UxH, col_of_id, n_items)
    target_id_U = ex.targets_UxN[np.arange(len(ex)), ex.length_U - 1]
    target = binary_csr(np.arange(len(ex)), col_of_id[target_id_U], (len(ex), n_items))
    return HeldOut(past, target, past, ex.user_U.astype(np.int64), np.arange(len(ex), dtype=np.int64))

  test = held_out(split.test)
  val = held_out(split.val) if split.val is not None else None
  # Training items = everything before the first held-out target.
  train = (val or test).fold_in_UxI
  return InteractionData(train, split.test.user_U.astype(np.int64), catalog, val, test, split.protocol)


def load_loo(dataset: str, data_dir: str, protocol: str = "loo", download: bool = False,
             seed: int = 42) -> InteractionData:
  """Our sequential leave-one-out split of `dataset` (MovieLens or Amazon) as matrices."""
  from genrec_jax.data.registry import load_task  # pylint: disable=g-import-not-at-top  (jax import)

  c = ml_collections.ConfigDict()
  c.seed = seed
  c.data = ml_collections.ConfigDict(dict(
      dataset=dataset, protocol=protocol, max_seq_len=1, download=download, history_filter="all",
      cold_start_frac=0.0))
  c.model = ml_collections.ConfigDict(dict(name="user_vectors", use_time_bias=False))
  task = load_task(c, data_dir)
  return from_split(task.split, task.catalog)


# ------------------------------------------------------------------- strong generalisation ----


def _split_items(rows: np.ndarray, cols: np.ndarray, test_prop: float, min_items: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Boolean [len(rows)]: True for the int(test_prop * n) events drawn per row (rows with
  >= min_items events), without replacement. Events must be grouped by row (sorted)."""
  is_test = np.zeros(len(rows), bool)
  starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
  ends = np.r_[starts[1:], len(rows)]
  for s, e in zip(starts, ends):
    n = e - s
    if n >= min_items:
      is_test[s + rng.choice(n, size=int(test_prop * n), replace=False)] = True
  return is_test


def _held_out_from_events(users: np.ndarray, user_ev: np.ndarray, col_ev: np.ndarray,
                          num_items: int, test_prop: float, rng: np.random.Generator) -> HeldOut:
  """Fold-in / target split of the events of `users` (events sorted by user, then column)."""
  rows = np.searchsorted(users, user_ev)  # users sorted
  is_test = _split_items(rows, col_ev, test_prop, 5, rng)
  fold = binary_csr(rows[~is_test], col_ev[~is_test], (len(users), num_items))
  target = binary_csr(rows[is_test], col_ev[is_test], (len(users), num_items))
  keep = np.flatnonzero(np.diff(target.indptr) > 0)  # users with something to predict
  fold, target = fold[keep], target[keep]
  return HeldOut(fold, target, fold, users[keep].astype(np.int64), np.full(len(keep), -1, np.int64))


def strong_generalization(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    num_heldout_users: int,
    *,
    min_rating: float = 3.5,
    min_user_clicks: int = 5,
    test_prop: float = 0.2,
    seed: int = 98765,
) -> InteractionData:
  """Liang et al.'s strong-generalisation split (module doc) of explicit ratings."""
  keep = np.asarray(rating) > min_rating
  user, item = np.asarray(user, np.int64)[keep], np.asarray(item, np.int64)[keep]
  pairs = np.unique(np.stack([user, item], 1), axis=0)  # sorted by (user, item), deduplicated
  user, item = pairs[:, 0], pairs[:, 1]
  uids, counts = np.unique(user, return_counts=True)
  uids = uids[counts >= min_user_clicks]
  if 2 * num_heldout_users >= len(uids):
    raise ConfigError(f"{2 * num_heldout_users} held-out users requested but only {len(uids)} "
                      f"users have >= {min_user_clicks} clicks")
  rng = np.random.default_rng(seed)
  uids = uids[rng.permutation(len(uids))]
  n_train = len(uids) - 2 * num_heldout_users
  tr_users = np.sort(uids[:n_train])
  vd_users = np.sort(uids[n_train : n_train + num_heldout_users])
  te_users = np.sort(uids[n_train + num_heldout_users :])

  in_tr = np.isin(user, tr_users)
  items_I = np.unique(item[in_tr])  # only items some training user clicked
  n_items = len(items_I)
  tr_row = np.searchsorted(tr_users, user[in_tr])
  train = binary_csr(tr_row, np.searchsorted(items_I, item[in_tr]), (len(tr_users), n_items))

  def held_out(users: np.ndarray) -> HeldOut:
    ev = np.isin(user, users) & np.isin(item, items_I)
    return _held_out_from_events(users, user[ev], np.searchsorted(items_I, item[ev]), n_items,
                                 test_prop, rng)

  val = held_out(vd_users)
  test = held_out(te_users)
  return InteractionData(train, tr_users, items_I, val, test, "strong")


def load_strong(dataset: str, data_dir: str, num_heldout_users: int, download: bool = False,
                seed: int = 98765, min_rating: float = 3.5) -> InteractionData:
  """`strong_generalization` of a MovieLens dataset's ratings."""
  from genrec_jax.data import movielens  # pylint: disable=g-import-not-at-top

  if dataset not in movielens.DATASETS:
    raise ConfigError(f"protocol 'strong' needs explicit ratings (MovieLens: {movielens.DATASETS}), "
                      f"got {dataset!r}")
  r = movielens.load_ratings(data_dir, dataset, download=download)
  return strong_generalization(r.user, r.item, r.rating, num_heldout_users,
                               min_rating=min_rating, seed=seed)


# ------------------------------------------------------------------------- random 80/20 ----


def random_split(user: np.ndarray, item: np.ndarray, test_prop: float = 0.2,
                 seed: int = 0) -> InteractionData:
  """Each user's distinct items split at random: int(test_prop * n) to test (users with >= 5
  items), the rest to train. Columns: every item that occurs; every user is a training row."""
  pairs = np.unique(np.stack([np.asarray(user, np.int64), np.asarray(item, np.int64)], 1), axis=0)
  users, rows = np.unique(pairs[:, 0], return_inverse=True)
  items_I, cols = np.unique(pairs[:, 1], return_inverse=True)
  shape = (len(users), len(items_I))
  is_test = _split_items(rows, cols, test_prop, 5, np.random.default_rng(seed))
  train = binary_csr(rows[~is_test], cols[~is_test], shape)
  target = binary_csr(rows[is_test], cols[is_test], shape)
  keep = np.flatnonzero(np.diff(target.indptr) > 0)
  test = HeldOut(train[keep], target[keep], train[keep], users[keep], keep.astype(np.int64))
  return InteractionData(train, users, items_I, None, test, "random")


def load_random(dataset: str, data_dir: str, test_prop: float = 0.2, seed: int = 0,
                download: bool = False) -> InteractionData:
  """`random_split` of every rating of a MovieLens dataset (all ratings count as implicit)."""
  from genrec_jax.data import movielens  # pylint: disable=g-import-not-at-top

  r = movielens.load_ratings(data_dir, dataset, download=download)
  return random_split(r.user, r.item, test_prop, seed)


# ------------------------------------------------------------------------------ by config ----


def load(cfg: ml_collections.ConfigDict, data_dir: str) -> InteractionData:
  """The InteractionData of `cfg.data.protocol` (fields: dataset, protocol, download and, for
  strong: num_heldout_users, split_seed; for random: test_prop, split_seed)."""
  d = cfg.data
  if d.protocol in ("loo", "paper"):
    return load_loo(d.dataset, data_dir, d.protocol, d.get("download", False), cfg.seed)
  if d.protocol == "strong":
    return load_strong(d.dataset, data_dir, d.num_heldout_users, d.get("download", False),
                       d.get("split_seed", 98765), d.get("min_rating", 3.5))
  if d.protocol == "random":
    return load_random(d.dataset, data_dir, d.get("test_prop", 0.2), d.get("split_seed", 0),
                       d.get("download", False))
  raise ConfigError(f"unknown data.protocol {d.protocol!r}; expected one of {PROTOCOLS}")
