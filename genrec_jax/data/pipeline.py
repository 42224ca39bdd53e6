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

import grain
import numpy as np

from genrec_jax.data.sequences import Examples


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


def train_batch(
    examples: Examples, batch_size: int, seed: int, packed: bool, step: int
) -> dict[str, np.ndarray]:
  """The model batch of training step `step` (0-based, counted over the whole run)."""
  spe = steps_per_epoch(len(examples), batch_size)
  epoch, k = divmod(step, spe)
  perm = _permutation(seed, epoch, len(examples))
  batch = padded_take(examples, perm[k * batch_size : (k + 1) * batch_size], batch_size)
  if packed:
    return pack(batch)
  m = padded_to_model(batch)
  del m["length"]
  return m


def train_dataset(
    examples: Examples, batch_size: int, seed: int, num_steps: int, packed: bool = False
) -> grain.MapDataset:
  """A grain MapDataset whose element k is training batch k."""
  fn = functools.partial(train_batch, examples, batch_size, seed, packed)
  return grain.MapDataset.range(num_steps).map(fn)


def train_iterator(
    examples: Examples,
    batch_size: int,
    seed: int,
    num_steps: int,
    packed: bool = False,
    prefetch: int = 4,
) -> grain.DatasetIterator:
  """A checkpointable iterator (get_state / set_state) over all training batches."""
  ds = train_dataset(examples, batch_size, seed, num_steps, packed)
  opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read_options=opts))


def eval_batches(
    examples: Examples, batch_size: int, packed: bool = False, row_multiple: int = 8
) -> list[tuple[dict[str, np.ndarray], int]]:
  """All evaluation batches, in user order: [(batch, number of real users)].

  Each batch holds `batch_size` user slots (the last batch padded with empty users) and the
  per-user fields the ranking needs: `user_row`/`user_last` (where the user's last history
  token sits), `history` (ids filtered from the ranking: the model's history window, or every
  past item when the examples carry `past_UxH`) and `target`.
  With `packed`, the users' sequences are packed into rows like training batches; every batch
  gets the same number of rows (the largest needed), so evaluation compiles once.
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
    out.append((model_batch, num_valid))
  return out
