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
HISTORY_FILTERS = ("window", "all", "none")
TRAIN_WINDOWS = ("last", "all")


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
  # Evaluation with history_filter='all': every item before the target, 0-padded (ids_UxN
  # holds only the last max_seq_len of them).
  past_UxH: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.length_U)

  def subset(self, rows: np.ndarray) -> "Examples":
    """The examples of `rows`, as a new Examples."""
    past = None if self.past_UxH is None else self.past_UxH[rows]
    return Examples(self.ids_UxN[rows], self.ts_UxN1[rows], self.targets_UxN[rows],
                    self.length_U[rows], self.user_U[rows], past)

  def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    out = {
        "ids": self.ids_UxN[rows],
        "ts": self.ts_UxN1[rows],
        "targets": self.targets_UxN[rows],
        "length": self.length_U[rows],
    }
    if self.past_UxH is not None:
      out["past"] = self.past_UxH[rows]
    return out


@dataclasses.dataclass(frozen=True)
class Split:
  train: Examples
  val: Examples | None
  test: Examples
  protocol: str


def _examples(
    seqs: UserSequences,
    rows: np.ndarray,
    ends: np.ndarray,
    max_seq_len: int,
    train: bool,
    history_filter: str = "window",
    own: np.ndarray | None = None,
) -> Examples:
  """Builds examples for users `rows` from their events before index `ends` (exclusive).

  train=True: the sequence s = events[:end][-(N + 1):] gives history s[:-1] and targets s[1:];
  with `own`, only the last own[r] targets of row r are kept (the others become 0 = no loss,
  their items stay in the history as context).
  train=False: history = events[:end - 1][-N:], the single target = events[end - 1]; `past`, the
  items the ranking removes, is the history (history_filter 'window': None), all of
  events[:end - 1] ('all'), or nothing ('none': one padding id).
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
      if own is not None:
        targets[r, : max(h - int(own[r]), 0)] = 0
    else:
      h = min(len(s_items) - 1, n)
      s_items, s_ts = s_items[-(h + 1) :], s_ts[-(h + 1) :]
      ids[r, :h] = s_items[:-1]
      targets[r, h - 1] = s_items[-1]
    ts[r, : h + 1] = s_ts
    length[r] = h
  past = None
  if history_filter == "none" and not train:
    past = np.zeros((num, 1), np.int32)
  if history_filter == "all" and not train:
    past = np.zeros((num, max(int(np.max(ends, initial=1)) - 1, 1)), np.int32)
    for r, (u, end) in enumerate(zip(rows, ends)):
      start = seqs.offsets[u]
      past[r, : end - 1] = seqs.items[start : start + end - 1]
  return Examples(ids, ts, targets, length, seqs.users[rows], past)


def window_ends(
    ends: np.ndarray, max_seq_len: int, stride: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(row, hi, own) of each training window when every training event is a target once.

  A user's events [0, end) give windows [max(0, hi - N - 1), hi) for hi = end, end - S,
  end - 2S, ... > 1 (S = stride, 0 = N). Window hi owns the targets max(1, hi - S) .. hi - 1
  (`own` = how many, counted from its end), so the owned targets of all windows are events
  1 .. end - 1, each once, and every target sees at least N + 1 - S events of context (all of
  them when fewer exist). S = N: windows overlap by one event and own all their targets; S = 1:
  one window per target with its full N-event history (RecBole's prefix examples).
  Returns, for each window, the index into `ends` it comes from, its hi and its own.
  """
  s = stride or max_seq_len
  if not 1 <= s <= max_seq_len:
    raise ValueError(f"train stride must be in [1, max_seq_len={max_seq_len}], got {s}")
  row, hi, own = [], [], []
  for r, end in enumerate(ends):
    for h in range(int(end), 1, -s):
      row.append(r)
      hi.append(h)
      own.append(min(s, h - 1))
  return np.asarray(row, np.int64), np.asarray(hi, np.int64), np.asarray(own, np.int64)


def make_split(
    seqs: UserSequences, protocol: str, max_seq_len: int, history_filter: str = "window",
    train_windows: str = "last",
    train_stride: int = 0,
) -> Split:
  """Leave-one-out splits by position.

  loo:   train on all but the last two events, validate on the second-to-last (history = all
         before it), test on the last (history = all before it).
  paper: the reference's shipped setting: train on all but the last, test on the last, no
         validation split.
  Users with too few events for the protocol (loo: 3, paper: 2) are left out.
  history_filter: which past items the ranking removes: 'window' = the last max_seq_len the
  model sees (generative-recommenders), 'all' = every past item (S3-Rec / TIGER on Amazon),
  'none' = none (RecBole's sequential models).
  train_windows: 'last' = one training row per user, its last N + 1 training events
  (generative-recommenders); 'all' = every training event is a target once (`window_ends`), so
  long histories give several rows (RecBole's prefix examples also use every event as a target).
  train_stride ('all' only): S of `window_ends`; 0 = N (windows overlap by one event). Smaller S
  gives each target more context at N / S times the training tokens; 1 = RecBole's prefixes.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
  if history_filter not in HISTORY_FILTERS:
    raise ValueError(f"unknown history_filter {history_filter!r}; expected one of {HISTORY_FILTERS}")
  if train_windows not in TRAIN_WINDOWS:
    raise ValueError(f"unknown train_windows {train_windows!r}; expected one of {TRAIN_WINDOWS}")
  lengths = seqs.lengths()
  held_out = 2 if protocol == "loo" else 1
  rows = np.flatnonzero(lengths >= held_out + 1)
  ln = lengths[rows]
  if train_stride and train_windows != "all":
    raise ValueError(f"train_stride={train_stride} needs train_windows='all'")
  if train_windows == "all":
    w_row, w_end, w_own = window_ends(ln - held_out, max_seq_len, train_stride)
    train = _examples(seqs, rows[w_row], w_end, max_seq_len, train=True, own=w_own)
  else:
    train = _examples(seqs, rows, ln - held_out, max_seq_len, train=True)
  test = _examples(seqs, rows, ln, max_seq_len, train=False, history_filter=history_filter)
  val = (_examples(seqs, rows, ln - 1, max_seq_len, train=False, history_filter=history_filter)
         if protocol == "loo" else None)
  return Split(train=train, val=val, test=test, protocol=protocol)


def _keep_events(seqs: UserSequences, keep_T: np.ndarray) -> UserSequences:
  """The same users with only the events where `keep_T` is true (order kept)."""
  user_of_event = np.repeat(np.arange(seqs.num_users), seqs.lengths())
  counts = np.bincount(user_of_event[keep_T], minlength=seqs.num_users)
  return dataclasses.replace(
      seqs,
      offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      items=seqs.items[keep_T],
      timestamps=seqs.timestamps[keep_T],
  )


@dataclasses.dataclass(frozen=True)
class ColdStartSplit:
  split: Split  # loo split; cold items appear only as val/test targets
  cold_items: np.ndarray  # int64 sorted ids held out of training
  warm_catalog: np.ndarray  # catalog minus cold items: what training may sample as negatives
  test_cold_rows: np.ndarray  # rows of split.test whose target is a cold item
  test_warm_rows: np.ndarray


def choose_cold_items(catalog: np.ndarray, cold_frac: float, seed: int) -> np.ndarray:
  """round(cold_frac * |catalog|) items drawn without replacement (seeded), sorted."""
  if not 0.0 < cold_frac < 1.0:
    raise ValueError(f"cold_frac must be in (0, 1), got {cold_frac}")
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(catalog, size=max(1, round(cold_frac * len(catalog))), replace=False))


def cold_start_split(
    seqs: UserSequences, max_seq_len: int, cold_items: np.ndarray, history_filter: str = "window"
) -> ColdStartSplit:
  """Leave-one-out where `cold_items` are never seen in training.

  Cold items are removed from every training sequence and every history, so no model sees them
  as input, target or sampled negative; they stay in the ranked catalog and can be val/test
  targets. Each user's val/test targets are the same events as in `make_split(..., 'loo')`;
  the test users are split by whether their target is cold.
  """
  cold = np.unique(np.asarray(cold_items, np.int64))
  catalog = seqs.catalog
  lengths = seqs.lengths()
  idx_T = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], lengths)  # position in user
  len_T = np.repeat(lengths, lengths)
  warm_T = ~np.isin(seqs.items, cold)
  train_seqs = _keep_events(seqs, warm_T & (idx_T < len_T - 2))
  val_seqs = _keep_events(seqs, (warm_T & (idx_T < len_T - 2)) | (idx_T == len_T - 2))
  test_seqs = _keep_events(seqs, (warm_T & (idx_T < len_T - 1)) | (idx_T == len_T - 1))
  # Users need 3+ events and a non-empty warm history before the val target (else there is no
  # state to rank from). One whose warm training prefix is a single event gets no training pair.
  rows = np.flatnonzero((lengths >= 3) & (val_seqs.lengths() >= 2))
  train = _examples(train_seqs, rows, train_seqs.lengths()[rows], max_seq_len, train=True)
  val = _examples(val_seqs, rows, val_seqs.lengths()[rows], max_seq_len, train=False, history_filter=history_filter)
  test = _examples(test_seqs, rows, test_seqs.lengths()[rows], max_seq_len, train=False, history_filter=history_filter)
  test_target = test.targets_UxN[np.arange(len(test)), np.maximum(test.length_U - 1, 0)]
  is_cold = np.isin(test_target, cold)
  return ColdStartSplit(
      split=Split(train=train, val=val, test=test, protocol="loo-cold"),
      cold_items=cold,
      warm_catalog=np.setdiff1d(catalog, cold),
      test_cold_rows=np.flatnonzero(is_cold),
      test_warm_rows=np.flatnonzero(~is_cold),
  )
