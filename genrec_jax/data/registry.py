"""Datasets by name -> a training Task (sequences, split, catalog)."""

from __future__ import annotations

import ml_collections

from genrec_jax.data import movielens
from genrec_jax.data.sequences import group_by_user, make_split
from genrec_jax.train.trainer import Task


def load_task(cfg: ml_collections.ConfigDict, data_dir: str) -> Task:
  """MovieLens: all ratings, original ids; the catalog is every movie of the metadata file
  (the reference's `all_item_ids`), so negatives and rankings cover movies nobody rated too."""
  name = cfg.data.dataset
  if name in movielens.DATASETS:
    ratings = movielens.load_ratings(data_dir, name, download=cfg.data.download)
    movies = movielens.load_movies(data_dir, name, download=cfg.data.download)
    seqs = group_by_user(ratings.user, ratings.item, ratings.timestamp, catalog=movies.item)
  else:
    raise ValueError(f"unknown dataset {name!r}; known: {movielens.DATASETS}")
  split = make_split(seqs, cfg.data.protocol, cfg.data.max_seq_len)
  return Task(split=split, catalog=seqs.catalog, num_items=seqs.num_embeddings)
