"""grain pipelines: shuffled training batches with a checkpointable iterator; packing.

Batch k of the whole run is a pure function of (seed, k): epoch e = k // steps_per_epoch uses the
permutation drawn from (seed, e). Resuming at step k therefore continues exactly where an
interrupted run stopped. The last batch of an epoch is padded with empty users (length 0, no
targets), which carry no loss weight.

Model batches (what the model reads), R rows of N tokens:
  ids, targets        item at each token and the item that follows it (0 = none)
  ts_key, ts_query    the token's timestamp, and the timestamp of the item that follows it
  pos, seg            position within its sequence, and sequence id within the row (0 = padding)
`padded_to_model` puts one user per row (the reference's dense layout); `pack` places several
users' sequences in one row (first-fit decreasing), the dense counterpart of jagged tensors. The
model masks attention to (causal & same segment), so both give the same outputs per user.
"""

from __future__ import annotations

import functools
import math

import grain
import numpy as np

from genrec_jax import distributed
from genrec_jax.config import ConfigError
from genrec_jax.data.sequences import Examples
from genrec_jax.distributed import Shard


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def padded_take(examples: Examples, rows: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Gathers `rows` and pads to `batch_size` with empty examples."""
  batch = examples.take(rows)
  pad = batch_size - len(rows)
  if pad:
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  return batch


def padded_to_model(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """One user per row: padded example arrays -> model batch."""
  ids = batch["ids"]
  n = ids.shape[1]
  valid = np.arange(n)[None, :] < batch["length"][:, None]
  return {
      "ids": ids,
      "targets": batch["targets"],
      "ts_key": np.where(valid, batch["ts"][:, :n], 0),
      "ts_query": np.where(valid, batch["ts"][:, 1:], 0),
      "pos": np.where(valid, np.arange(n, dtype=np.int32)[None, :], 0).astype(np.int32),
      "seg": valid.astype(np.int32),
      "length": batch["length"],
  }


def pack_rows(lengths: np.ndarray, capacity: int) -> list[list[int]]:
  """First-fit decreasing: groups sequence indices into rows of at most `capacity` tokens."""
  rows: list[list[int]] = []
  free: list[int] = []
  for i in sorted(np.flatnonzero(lengths > 0), key=lambda i: (-lengths[i], i)):
    for r, f in enumerate(free):
      if f >= lengths[i]:
        rows[r].append(int(i))
        free[r] -= int(lengths[i])
        break
    else:
      rows.append([int(i)])
      free.append(capacity - int(lengths[i]))
  return rows


def _fill_rows(m: dict[str, np.ndarray], lengths: np.ndarray, rows: list[list[int]], num_rows: int):
  """Copies each sequence's tokens into its packed row; returns the rows and each sequence's
  (row, index of its last token), -1 for empty sequences."""
  n = m["ids"].shape[1]
  out = {k: np.zeros((num_rows, n), m[k].dtype) for k in ("ids", "targets", "ts_key", "ts_query", "pos", "seg")}
  row_of = np.full(len(lengths), -1, np.int32)
  last_of = np.full(len(lengths), -1, np.int32)
  for r, members in enumerate(rows):
    start = 0
    for s, i in enumerate(members, start=1):
      ln = int(lengths[i])
      for k in ("ids", "targets", "ts_key", "ts_query", "pos"):
        out[k][r, start : start + ln] = m[k][i, :ln]
      out["seg"][r, start : start + ln] = s
      row_of[i], last_of[i] = r, start + ln - 1
      start += ln
  return out, row_of, last_of


def _round_up(x: int, multiple: int) -> int:
  return max(multiple, -(-x // multiple) * multiple)


def pack(batch: dict[str, np.ndarray], row_multiple: int = 8) -> dict[str, np.ndarray]:
  """Packs a padded batch into as few rows as fit (rounded up to `row_multiple`)."""
  m = padded_to_model(batch)
  rows = pack_rows(batch["length"], m["ids"].shape[1])
  out, _, _ = _fill_rows(m, batch["length"], rows, _round_up(len(rows), row_multiple))
  return out


def row_multiple(num_blocks: int, base: int = 8) -> int:
  """Packed batches have a multiple of this many rows: of 8, and of the blocks they are split into."""
  return math.lcm(base, num_blocks)


def train_batch(
    examples: Examples,
    batch_size: int,
    seed: int,
    packed: bool,
    step: int,
    shard: Shard | None = None,
    rows_multiple: int = 8,
) -> dict[str, np.ndarray]:
  """The model batch of training step `step` (0-based, counted over the whole run).

  With `shard`, only this process's block of rows of the global batch (`distributed.data_shard`),
  built from the users placed in those rows only. Padded: rows are the batch's user slots.
  Packed: the placement of all the batch's users is computed from their lengths alone, so every
  process agrees on it and on the row count, and fills its own rows.
  """
  spe = steps_per_epoch(len(examples), batch_size)
  epoch, k = divmod(step, spe)
  users = _permutation(seed, epoch, len(examples))[k * batch_size : (k + 1) * batch_size]
  if packed:
    placement = pack_rows(examples.length_U[users], examples.ids_UxN.shape[1])
    lo, hi = distributed.shard_rows(_round_up(len(placement), rows_multiple), shard)
    mine = placement[lo:hi]
    members = [i for row in mine for i in row]
    local = {i: j for j, i in enumerate(members)}
    batch = examples.take(users[np.asarray(members, np.int64)])
    out, _, _ = _fill_rows(padded_to_model(batch), batch["length"],
                           [[local[i] for i in row] for row in mine], hi - lo)
    return out
  lo, hi = distributed.shard_rows(batch_size, shard)
  m = padded_to_model(padded_take(examples, users[lo:hi], hi - lo))
  del m["length"]
  return m


def stochastic_length_probability(length_U: np.ndarray, max_len: int, alpha: float) -> np.ndarray:
  """P(a user keeps the whole sequence) under Stochastic Length: min(1, N^α / n²).

  HSTU (Zhai et al. 2024, §3.3): a training sequence of n > N^{α/2} tokens is replaced, with
  probability 1 - N^α/n², by a subsequence of N^{α/2} tokens, and kept whole otherwise; shorter
  sequences are always kept (there N^α/n² ≥ 1). Expected attention cost per user ≤ 2 N^α.
  """
  n = np.maximum(length_U.astype(np.float64), 1.0)
  return np.minimum(1.0, float(max_len) ** alpha / n**2)


def stochastic_length_examples(examples: Examples, alpha: float, seed: int, epoch: int) -> Examples:
  """Training examples of one epoch after Stochastic Length (α > 0), a pure function of
  (examples, α, seed, epoch).

  N = the examples' max_seq_len, L = floor(N^{α/2}). Each user with n > L tokens is, with
  probability 1 - N^α/n², shortened to L tokens: L + 1 of the n + 1 items of its chain
  s_0..s_n (history ids = s_0..s_{n-1}, targets = s_1..s_n) are drawn uniformly without
  replacement and kept in order, giving history s_{k_0..k_{L-1}}, targets s_{k_1..k_L} and their
  timestamps. Never used for evaluation examples.
  """
  ids, ts, targets, length = examples.ids_UxN, examples.ts_UxN1, examples.targets_UxN, examples.length_U
  n_max = ids.shape[1]
  short = int(math.floor(n_max ** (alpha / 2) + 1e-9))
  rng = np.random.default_rng([seed, epoch, 0x51])  # its own stream (permutations use [seed, epoch])
  keep_whole = rng.random(len(length)) < stochastic_length_probability(length, n_max, alpha)
  rows = np.flatnonzero((length > short) & ~keep_whole)
  if not len(rows):
    return examples
  ids, ts, targets, length = ids.copy(), ts.copy(), targets.copy(), length.copy()
  for u in rows:
    n = int(length[u])
    chain = np.append(ids[u, :n], targets[u, n - 1])  # s_0..s_n
    kept = np.sort(rng.choice(n + 1, short + 1, replace=False))
    ids[u], targets[u], ts[u] = 0, 0, 0
    ids[u, :short] = chain[kept[:-1]]
    targets[u, :short] = chain[kept[1:]]
    ts[u, : short + 1] = examples.ts_UxN1[u, kept]
    length[u] = short
  return Examples(ids, ts, targets, length, examples.user_U, examples.past_UxH)


class _StochasticLengthBatches:
  """step -> train_batch(stochastic_length_examples(examples, α, seed, epoch of step), ..., step).

  Batch k stays a pure function of (seed, k), so a resumed run sees the same batches. The
  current epoch's shortened examples are cached.
  """

  def __init__(self, examples: Examples, alpha: float, batch_size: int, seed: int, packed: bool, **kwargs):
    self.examples, self.alpha, self.batch_size, self.seed, self.packed = examples, alpha, batch_size, seed, packed
    self.kwargs = kwargs
    self.spe = steps_per_epoch(len(examples), batch_size)
    self._epoch, self._cached = -1, examples

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch = step // self.spe
    if epoch != self._epoch:
      self._epoch, self._cached = epoch, stochastic_length_examples(self.examples, self.alpha, self.seed, epoch)
    return train_batch(self._cached, self.batch_size, self.seed, self.packed, step, **self.kwargs)


def train_dataset(
    examples: Examples,
    batch_size: int,
    seed: int,
    num_steps: int,
    packed: bool = False,
    shard: Shard | None = None,
    rows_multiple: int = 8,
    stochastic_length_alpha: float = 0.0,
) -> grain.MapDataset:
  """A grain MapDataset whose element k is (this process's rows of) training batch k.

  stochastic_length_alpha > 0: each epoch's examples go through `stochastic_length_examples`.
  """
  fn = functools.partial(train_batch, examples, batch_size, seed, packed,
                         shard=shard, rows_multiple=rows_multiple)
  if not 0 <= stochastic_length_alpha <= 2:
    raise ConfigError(
        f"data.stochastic_length_alpha must be in [0, 2] (0 = off), got {stochastic_length_alpha}"
    )
  if stochastic_length_alpha > 0:
    fn = _StochasticLengthBatches(examples, stochastic_length_alpha, batch_size, seed, packed,
                                  shard=shard, rows_multiple=rows_multiple)
  return grain.MapDataset.range(num_steps).map(fn)


def train_iterator(
    examples: Examples,
    batch_size: int,
    seed: int,
    num_steps: int,
    packed: bool = False,
    prefetch: int = 4,
    shard: Shard | None = None,
    rows_multiple: int = 8,
    stochastic_length_alpha: float = 0.0,
) -> grain.DatasetIterator:
  """A checkpointable iterator (get_state / set_state) over all training batches."""
  ds = train_dataset(examples, batch_size, seed, num_steps, packed, shard, rows_multiple,
                     stochastic_length_alpha)
  opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read_options=opts))


def eval_batches(
    examples: Examples,
    batch_size: int,
    packed: bool = False,
    row_multiple: int = 8,
    shard: Shard | None = None,
) -> list[tuple[dict[str, np.ndarray], int]]:
  """All evaluation batches, in user order: [(batch, number of real users)].

  Each batch holds `batch_size` user slots (the last batch padded with empty users) and the
  per-user fields the ranking needs: `user_row`/`user_last` (where the user's last history
  token sits), `history` (ids filtered from the ranking: the model's history window, or every
  past item when the examples carry `past_UxH`) and `target`.
  With `packed`, the users' sequences are packed into rows like training batches; every batch
  gets the same number of rows (the largest needed), so evaluation compiles once.
  With `shard`, each batch keeps only this process's block of rows and of user slots
  (`distributed.data_shard`); `user_row` still indexes rows of the global batch. The number of
  real users stays that of the whole batch.
  """
  chunks = []
  for start in range(0, len(examples), batch_size):
    rows = np.arange(start, min(start + batch_size, len(examples)))
    chunks.append((padded_take(examples, rows, batch_size), len(rows)))
  n = examples.ids_UxN.shape[1]
  placements = [pack_rows(b["length"], n) if packed else None for b, _ in chunks]
  num_rows = _round_up(max((len(p) for p in placements if p is not None), default=0), row_multiple)
  out = []
  for (batch, num_valid), placement in zip(chunks, placements):
    m = padded_to_model(batch)
    length = m.pop("length")
    if packed:
      model_batch, user_row, user_last = _fill_rows(m, length, placement, num_rows)
    else:
      model_batch = m
      user_row, user_last = np.arange(batch_size, dtype=np.int32), length.astype(np.int32) - 1
    last = np.maximum(length - 1, 0)
    model_batch.update(
        user_row=np.maximum(user_row, 0),
        user_last=np.maximum(user_last, 0),
        history=batch.get("past", batch["ids"]),
        target=batch["targets"][np.arange(batch_size), last],
    )
    if shard is not None:
      model_batch = _shard_eval_batch(model_batch, batch_size, shard)
    out.append((model_batch, num_valid))
  return out


USER_FIELDS = ("user_row", "user_last", "history", "target")  # one row per user slot


def _shard_eval_batch(batch: dict[str, np.ndarray], batch_size: int, shard: Shard) -> dict[str, np.ndarray]:
  """This process's block of the model rows and of the user slots of one evaluation batch."""
  rows = distributed.shard_rows(len(batch["ids"]), shard)
  users = distributed.shard_rows(batch_size, shard)
  return {k: v[slice(*users)] if k in USER_FIELDS else v[slice(*rows)] for k, v in batch.items()}
