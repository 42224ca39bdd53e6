"""grain pipelines: shuffled fixed-shape training batches with a checkpointable iterator.

Batch k of the whole run is a pure function of (seed, k): epoch e = k // steps_per_epoch uses the
permutation drawn from (seed, e). Resuming at step k therefore continues exactly where an
interrupted run stopped. Every batch has the same shape: the last batch of an epoch is padded
with empty rows (length 0, no targets), which carry no loss weight.
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


def train_batch(examples: Examples, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
  """The training batch number `step` (0-based, counted over the whole run)."""
  spe = steps_per_epoch(len(examples), batch_size)
  epoch, k = divmod(step, spe)
  perm = _permutation(seed, epoch, len(examples))
  return padded_take(examples, perm[k * batch_size : (k + 1) * batch_size], batch_size)


def train_dataset(
    examples: Examples, batch_size: int, seed: int, num_steps: int
) -> grain.MapDataset:
  """A grain MapDataset whose element k is training batch k."""
  fn = functools.partial(train_batch, examples, batch_size, seed)
  return grain.MapDataset.range(num_steps).map(fn)


def train_iterator(
    examples: Examples, batch_size: int, seed: int, num_steps: int, prefetch: int = 2
) -> grain.DatasetIterator:
  """A checkpointable iterator (get_state / set_state) over all training batches."""
  ds = train_dataset(examples, batch_size, seed, num_steps)
  opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read_options=opts))


def eval_batches(examples: Examples, batch_size: int):
  """Yields (batch, num_valid) over all examples in order, padded to fixed shape."""
  for start in range(0, len(examples), batch_size):
    rows = np.arange(start, min(start + batch_size, len(examples)))
    yield padded_take(examples, rows, batch_size), len(rows)
