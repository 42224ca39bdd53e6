"""Per-event ratings aligned with the sequence examples (the labels of the multi-task heads).

`load_rated_task` returns the same Task as `registry.load_task` (same users, same order, same
split) plus, for every example array, the rating of the item each position predicts:
  target_rating_UxN[u, t] = rating of the event targets_UxN[u, t] was built from (1..5), 0 = none.

Exactness by construction: `group_by_user` is run a second time with each event's index in the
ratings file in place of its item id, so the library's own ordering (user, then timestamp, ties in
file order) places the event ids, and `make_split` builds "examples" whose targets are those event
ids at exactly the positions of the real targets. A rating is then a lookup by event id, and
`RatedSplit.check` verifies that the items of the looked-up events are the real targets.

Batches: `aux_train_batch` / `aux_eval_batches` run the pipeline's own batch functions on examples
whose targets are replaced by another per-position value (a rating, a user index); since packing
depends on lengths only, the value lands on the same row and token as the target it belongs to.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from genrec_jax.config import ConfigError
from genrec_jax.data import movielens, pipeline
from genrec_jax.data.sequences import Examples, Split, group_by_user, make_split
from genrec_jax.distributed import Shard
from genrec_jax.train.trainer import Task

LIKED_THRESHOLD = 4.0  # 'liked' = rating >= 4


@dataclasses.dataclass(frozen=True)
class RatedExamples:
  """Per-position labels of one Examples array, same shape as its targets_UxN."""

  event_UxN: np.ndarray  # int64, index into the ratings file of the target event, -1 = none
  rating_UxN: np.ndarray  # float32, rating of the target (0 = no target)
  user_U: np.ndarray  # int32, the user's row in the split (0..U-1): the CF tower's user index


@dataclasses.dataclass(frozen=True)
class RatedSplit:
  train: RatedExamples
  val: RatedExamples | None
  test: RatedExamples

  def check(self, split: Split, item_of_event: np.ndarray) -> None:
    """Raises if any looked-up event's item differs from the example's target (alignment test)."""
    for name in ("train", "val", "test"):
      ex, rx = getattr(split, name), getattr(self, name)
      if ex is None:
        continue
      has = rx.event_UxN >= 0
      if not np.array_equal(has, ex.targets_UxN != 0):
        raise AssertionError(f"{name}: rated positions differ from the target positions")
      if not np.array_equal(item_of_event[rx.event_UxN[has]], ex.targets_UxN[has]):
        raise AssertionError(f"{name}: an event's item differs from the example's target")


def _rated(ex: Examples, rating_E: np.ndarray) -> RatedExamples:
  """Event-id examples (targets = event id + 1) -> ratings at every target position."""
  event_UxN = ex.targets_UxN.astype(np.int64) - 1
  rating_UxN = np.where(event_UxN >= 0, rating_E[np.maximum(event_UxN, 0)], 0.0).astype(np.float32)
  return RatedExamples(event_UxN, rating_UxN, np.arange(len(ex), dtype=np.int32))


def rate_split(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, rating: np.ndarray,
    protocol: str, max_seq_len: int, history_filter: str = "window", train_windows: str = "last",
    train_stride: int = 0,
) -> RatedSplit:
  """Ratings at the target positions of make_split(group_by_user(user, item, timestamp), ...)."""
  del item  # the split of the real items is not needed: event ids carry the same positions
  event_E = np.arange(1, len(user) + 1, dtype=np.int64)  # event id + 1 (0 is padding)
  seqs = group_by_user(user, event_E, timestamp)
  split = make_split(seqs, protocol, max_seq_len, history_filter, train_windows, train_stride)
  rating_E = np.asarray(rating, np.float32)
  return RatedSplit(
      train=_rated(split.train, rating_E),
      val=None if split.val is None else _rated(split.val, rating_E),
      test=_rated(split.test, rating_E),
  )


def load_rated_task(cfg: ml_collections.ConfigDict, data_dir: str) -> tuple[Task, RatedSplit]:
  """The MovieLens Task of `registry.load_task` and its ratings (checked to be aligned)."""
  from genrec_jax.data.registry import filter_ratings, load_task  # pylint: disable=g-import-not-at-top  (cycle)

  name = cfg.data.dataset
  if name not in movielens.DATASETS:
    raise ConfigError(f"dataset {name!r} has no ratings; the rating heads need MovieLens "
                      f"({', '.join(movielens.DATASETS)})")
  if cfg.data.get("cold_start_frac", 0.0):
    raise ConfigError("the multi-task experiment does not support data.cold_start_frac")
  task = load_task(cfg, data_dir)
  r = filter_ratings(cfg, movielens.load_ratings(data_dir, name, download=cfg.data.download))
  rated = rate_split(r.user, r.item, r.timestamp, r.rating, cfg.data.protocol, cfg.data.max_seq_len,
                     cfg.data.get("history_filter", "window"), cfg.data.get("train_windows", "last"),
                     cfg.data.get("train_stride", 0))
  rated.check(task.split, np.asarray(r.item))
  return task, rated


def with_targets(ex: Examples, values_UxN: np.ndarray) -> Examples:
  """`ex` with its targets replaced by `values_UxN` (kept only where a target exists)."""
  values = np.where(ex.targets_UxN != 0, values_UxN, 0).astype(np.int32)
  return dataclasses.replace(ex, targets_UxN=values)


def rating_codes(rx: RatedExamples) -> np.ndarray:
  """Ratings as int codes round(2·r) (half stars exact; 0 = none), for the int target field."""
  return np.rint(2.0 * rx.rating_UxN).astype(np.int32)


def user_codes(ex: Examples, rx: RatedExamples) -> np.ndarray:
  """The user index + 1 at every position (0 = none)."""
  return np.broadcast_to(rx.user_U[:, None] + 1, ex.targets_UxN.shape)


def aux_train_batch(
    examples: Examples, aux: dict[str, Examples], batch_size: int, seed: int, packed: bool,
    step: int, shard: Shard | None = None, rows_multiple: int = 8,
) -> dict[str, np.ndarray]:
  """`pipeline.train_batch` plus, for each (name, examples) of `aux`, `name` = its targets laid
  out as the batch's targets (same rows, same tokens)."""
  batch = pipeline.train_batch(examples, batch_size, seed, packed, step, shard, rows_multiple)
  for name, ex in aux.items():
    batch[name] = pipeline.train_batch(ex, batch_size, seed, packed, step, shard, rows_multiple)["targets"]
  return batch


def aux_train_iterator(
    examples: Examples, aux: dict[str, Examples], batch_size: int, seed: int, num_steps: int,
    packed: bool, shard: Shard | None = None, rows_multiple: int = 8, prefetch: int = 4,
):
  """A checkpointable grain iterator over `aux_train_batch` for steps 0..num_steps-1."""
  import functools  # pylint: disable=g-import-not-at-top

  import grain  # pylint: disable=g-import-not-at-top

  fn = functools.partial(aux_train_batch, examples, aux, batch_size, seed, packed,
                         shard=shard, rows_multiple=rows_multiple)
  ds = grain.MapDataset.range(num_steps).map(fn)
  opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read_options=opts))


def aux_eval_batches(
    examples: Examples, aux: dict[str, Examples], batch_size: int, packed: bool,
    row_multiple: int = 8, shard: Shard | None = None,
) -> list[tuple[dict[str, np.ndarray], int]]:
  """`pipeline.eval_batches` plus `name` = the per-user-slot target of each aux examples."""
  out = pipeline.eval_batches(examples, batch_size, packed, row_multiple, shard)
  for name, ex in aux.items():
    other = pipeline.eval_batches(ex, batch_size, packed, row_multiple, shard)
    for (batch, _), (b2, _) in zip(out, other):
      batch[name] = b2["target"]
  return out
