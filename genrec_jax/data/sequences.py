"""Interaction events -> per-user chronological sequences -> padded split arrays (pure NumPy).

Preprocessing follows Meta's generative-recommenders research path for MovieLens: every rating is
kept (no k-core, no rating filter), item ids are kept as they are (the embedding table has
max_id + 1 rows, row 0 is padding), each user's events are ordered by timestamp and only the last
`max_seq_len` history items are fed to the model. Our sort is stable, so events with equal
timestamps keep their file order (the reference's pandas sort is not stable on ties).

Example layout shared by training and evaluation (N = max_seq_len):
  ids_N      history item ids, right-padded with 0
  ts_N1      timestamps of the history plus, at index `length`, the next item's timestamp
             (HSTU's time bias for query i uses ts[i + 1]); 0-padded
  targets_N  the item that follows each history position (0 = no supervision)
  length     number of valid history items
Evaluation examples carry the held-out item as targets_N[length - 1] and nothing else.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PROTOCOLS = ("loo", "paper")


@dataclasses.dataclass(frozen=True)
class UserSequences:
  """All users' chronological sequences, stored flat with offsets (a jagged array)."""

  users: np.ndarray  # int64 [U]
  offsets: np.ndarray  # int64 [U + 1]
  items: np.ndarray  # int64 [T]
  timestamps: np.ndarray  # int64 [T]
  catalog: np.ndarray  # int64 [C] sorted item ids that may be recommended / sampled
  num_embeddings: int  # rows of the item table: max item id + 1 (row 0 = padding)

  @property
  def num_users(self) -> int:
    return len(self.users)

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


def group_by_user(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    catalog: np.ndarray | None = None,
) -> UserSequences:
  """Groups events per user, ordered by (timestamp, file order); users sorted by id.

  `catalog` is the set of candidate items (e.g. every movie in movies.dat, as the reference's
  `all_item_ids`); by default the items that occur in the events.
  """
  user = np.asarray(user, np.int64)
  item = np.asarray(item, np.int64)
  timestamp = np.asarray(timestamp, np.int64)
  if not (user.shape == item.shape == timestamp.shape):
    raise ValueError("user, item and timestamp must have the same shape")
  if len(item) and item.min() <= 0:
    raise ValueError("item ids must be >= 1 (0 is the padding row)")
  order = np.lexsort((timestamp, user))  # lexsort is stable: ties keep file order
  user_s = user[order]
  users, starts = np.unique(user_s, return_index=True)
  offsets = np.append(starts, len(user_s)).astype(np.int64)
  seen = np.unique(item)
  catalog = seen if catalog is None else np.unique(np.asarray(catalog, np.int64))
  missing = np.setdiff1d(seen, catalog)
  if len(missing):
    raise ValueError(f"{len(missing)} rated items are not in the catalog, e.g. {missing[:5]}")
  return UserSequences(
      users=users.astype(np.int64),
      offsets=offsets,
      items=item[order],
      timestamps=timestamp[order],
      catalog=catalog,
      num_embeddings=int(catalog.max()) + 1,
  )


@dataclasses.dataclass(frozen=True)
class Examples:
  """Padded example arrays, one row per user."""

  ids_UxN: np.ndarray  # int32
  ts_UxN1: np.ndarray  # int64
  targets_UxN: np.ndarray  # int32
  length_U: np.ndarray  # int32
  user_U: np.ndarray  # int64 original user ids

  def __len__(self) -> int:
    return len(self.length_U)

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "ids": self.ids_UxN[rows],
        "ts": self.ts_UxN1[rows],
        "targets": self.targets_UxN[rows],
        "length": self.length_U[rows],
    }


@dataclasses.dataclass(frozen=True)
class Split:
  train: Examples
  val: Examples | None
  test: Examples
  protocol: str


def _examples(
    seqs: UserSequences, rows: np.ndarray, ends: np.ndarray, max_seq_len: int, train: bool
) -> Examples:
  """Builds examples for users `rows` from their events before index `ends` (exclusive).

  train=True: the sequence s = events[:end][-(N + 1):] gives history s[:-1] and targets s[1:].
  train=False: history = events[:end - 1][-N:], the single target = events[end - 1].
  """
  n = max_seq_len
  num = len(rows)
  ids = np.zeros((num, n), np.int32)
  ts = np.zeros((num, n + 1), np.int64)
  targets = np.zeros((num, n), np.int32)
  length = np.zeros((num,), np.int32)
  for r, (u, end) in enumerate(zip(rows, ends)):
    start = seqs.offsets[u]
    s_items = seqs.items[start : start + end]
    s_ts = seqs.timestamps[start : start + end]
    if train:
      s_items, s_ts = s_items[-(n + 1) :], s_ts[-(n + 1) :]
      h = len(s_items) - 1
      ids[r, :h] = s_items[:-1]
      targets[r, :h] = s_items[1:]
    else:
      h = min(len(s_items) - 1, n)
      s_items, s_ts = s_items[-(h + 1) :], s_ts[-(h + 1) :]
      ids[r, :h] = s_items[:-1]
      targets[r, h - 1] = s_items[-1]
    ts[r, : h + 1] = s_ts
    length[r] = h
  return Examples(ids, ts, targets, length, seqs.users[rows])


def make_split(seqs: UserSequences, protocol: str, max_seq_len: int) -> Split:
  """Leave-one-out splits by position.

  loo:   train on all but the last two events, validate on the second-to-last (history = all
         before it), test on the last (history = all before it).
  paper: the reference's shipped setting: train on all but the last, test on the last, no
         validation split.
  Users with too few events for the protocol (loo: 3, paper: 2) are left out.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  lengths = seqs.lengths()
  held_out = 2 if protocol == "loo" else 1
  rows = np.flatnonzero(lengths >= held_out + 1)
  ln = lengths[rows]
  train = _examples(seqs, rows, ln - held_out, max_seq_len, train=True)
  test = _examples(seqs, rows, ln, max_seq_len, train=False)
  val = _examples(seqs, rows, ln - 1, max_seq_len, train=False) if protocol == "loo" else None
  return Split(train=train, val=val, test=test, protocol=protocol)
