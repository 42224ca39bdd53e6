"""Datasets by name -> a training Task (sequences, split, catalog).

A dataset is a loader `(cfg, data_dir) -> UserSequences` in `LOADERS`, looked up by
`cfg.data.dataset`; `load_task` splits what it returns with the config's protocol. The built-in
MovieLens and Amazon loaders sit in the table next to any an experiment adds with
`register_dataset` (docs/extending.md, experiments/example_events_dataset.py).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from genrec_jax.config import ConfigError
from genrec_jax.data import amazon, movielens, tfds_source
from genrec_jax.data.sequences import (HISTORY_FILTERS, TRAIN_WINDOWS, UserSequences, choose_cold_items,
                                       cold_start_split, group_by_user, make_split)
from genrec_jax.train.trainer import Task

CATALOGS = ("metadata", "rated")  # data.catalog values (MovieLens; see config.py)


def filter_ratings(cfg: ml_collections.ConfigDict, ratings: movielens.Ratings) -> movielens.Ratings:
  """`ratings` after data.min_rating and data.min_interactions (movielens.filter_ratings)."""
  return movielens.filter_ratings(ratings, cfg.data.get("min_rating", 0.0), cfg.data.get("min_interactions", 0))


def _movielens(cfg: ml_collections.ConfigDict, data_dir: str) -> UserSequences:
  """MovieLens ratings (data.source: files | tfds) after data.min_rating / min_interactions."""
  ratings, movies = tfds_source.load_movielens(cfg.data, data_dir)
  ratings = filter_ratings(cfg, ratings)
  metadata = cfg.data.get("catalog", "metadata") == "metadata"
  return group_by_user(ratings.user, ratings.item, ratings.timestamp,
                       catalog=movies.item if metadata else None)  # None: the rated items


def _amazon(cfg: ml_collections.ConfigDict, data_dir: str) -> UserSequences:
  """S3-Rec/P5 files: each user's items in file order, positions standing in for timestamps."""
  name = cfg.data.dataset
  if cfg.model.name == "hstu" and cfg.model.get("use_time_bias", False):
    raise ConfigError(
        f"{name} has no timestamps (only the order of each user's items), so HSTU's time bias "
        f"is meaningless on it: set --config.model.use_time_bias=False "
        f"(experiments/hstu_amazon.py does)."
    )
  return amazon.to_user_sequences(amazon.load(data_dir, name, download=cfg.data.download))


Loader = Callable[[ml_collections.ConfigDict, str], UserSequences]
LOADERS: dict[str, Loader] = {
    **{name: _movielens for name in movielens.DATASETS},
    **{name: _amazon for name in amazon.DATASETS},
}


def register_dataset(name: str, loader: Loader) -> None:
  """Makes `cfg.data.dataset=name` load `loader(cfg, data_dir)`: the user sequences (events
  grouped by user, sequences.group_by_user), which load_task then splits. Names are unique."""
  if name in LOADERS and LOADERS[name] is not loader:
    raise ValueError(f"dataset {name!r} is already registered")
  LOADERS[name] = loader


def load_task(cfg: ml_collections.ConfigDict, data_dir: str) -> Task:
  """Loads `cfg.data.dataset` and splits it with `cfg.data.protocol`.

  MovieLens: all ratings, original ids; the catalog is every movie of the metadata file (the
  reference's `all_item_ids`), so negatives and rankings cover movies nobody rated too, or with
  data.catalog='rated' only the rated movies (RecBole's candidate set).
  Amazon (S3-Rec/P5 files): the users' item sequences in file order, with positions standing in
  for the missing timestamps; the catalog is every item id 1..num_items. HSTU's time bias would
  only see positions there, so it must be off (`model.use_time_bias=False`).
  Registered datasets (`register_dataset`): whatever their loader returns.
  """
  name = cfg.data.dataset
  if name not in LOADERS:
    raise ConfigError(f"unknown dataset {name!r}; known: {tuple(LOADERS)}")
  if cfg.data.get("source", "files") != "files" and name not in movielens.DATASETS:
    raise ConfigError(f"data.source={cfg.data.source!r} is for MovieLens; {name!r} is read from files")
  catalog = cfg.data.get("catalog", "metadata")
  if catalog not in CATALOGS:
    raise ConfigError(f"unknown data.catalog {catalog!r}; expected one of {CATALOGS}")
  if catalog != "metadata" and name not in movielens.DATASETS:
    raise ConfigError(f"data.catalog={catalog!r} is for MovieLens; {name!r} ranks its item ids 1..n")
  for key in ("min_rating", "min_interactions"):
    if cfg.data.get(key, 0) and name not in movielens.DATASETS:
      raise ConfigError(f"data.{key} filters MovieLens ratings; {name!r} is used as shipped")
  seqs = LOADERS[name](cfg, data_dir)
  history_filter = cfg.data.get("history_filter", "window")
  if history_filter not in HISTORY_FILTERS:
    raise ConfigError(f"unknown data.history_filter {history_filter!r}; expected one of {HISTORY_FILTERS}")
  train_windows = cfg.data.get("train_windows", "last")
  if train_windows not in TRAIN_WINDOWS:
    raise ConfigError(f"unknown data.train_windows {train_windows!r}; expected one of {TRAIN_WINDOWS}")
  train_stride = cfg.data.get("train_stride", 0)
  if train_stride and (train_windows != "all" or not 1 <= train_stride <= cfg.data.max_seq_len):
    raise ConfigError(f"data.train_stride={train_stride} needs data.train_windows='all' and a stride in "
                      f"[1, data.max_seq_len={cfg.data.max_seq_len}] (0 = max_seq_len)")
  if train_stride and cfg.data.get("stochastic_length_alpha", 0.0):
    raise ConfigError("data.train_stride does not combine with data.stochastic_length_alpha")
  cold_frac = cfg.data.get("cold_start_frac", 0.0)
  if cold_frac and train_windows != "last":
    raise ConfigError("data.cold_start_frac supports data.train_windows='last' only")
  if cold_frac:
    if cfg.data.protocol != "loo" or not 0.0 < cold_frac < 1.0:
      raise ConfigError(
          f"data.cold_start_frac={cold_frac} needs data.protocol='loo' and a fraction in (0, 1)"
      )
    cold = choose_cold_items(seqs.catalog, cold_frac, cfg.seed)
    cs = cold_start_split(seqs, cfg.data.max_seq_len, cold, history_filter)
    return Task(split=cs.split, catalog=seqs.catalog, num_items=seqs.num_embeddings,
                train_catalog=cs.warm_catalog,
                test_subsets={"cold": cs.test_cold_rows, "warm": cs.test_warm_rows})
  split = make_split(seqs, cfg.data.protocol, cfg.data.max_seq_len, history_filter, train_windows,
                     train_stride)
  return Task(split=split, catalog=seqs.catalog, num_items=seqs.num_embeddings)
