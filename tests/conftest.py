"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # lets a bare `pytest` import genrec_jax without installing it
  sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The shared real-data directory: $GENREC_DATA_DIR, else ../shared/data next to the repo."""
  return pathlib.Path(os.environ.get("GENREC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


# The HSTU experiment config shrunk for tests (ML-100K, max_seq_len 50, D = 32, 1 block), as
# --config.<path>=<value> overrides, so in-process runs and `python -m experiments...` agree.
SMALL_ML100K = {
    "data.dataset": "ml-100k",
    "data.max_seq_len": 50,
    "model.embed_dim": 32,
    "model.dqk": 32,
    "model.dv": 32,
    "model.num_blocks": 1,
    "train.batch_size": 64,
    "train.eval_batch_size": 256,
}


def small_ml100k_config(**overrides):
  """get_config() of experiments/hstu_movielens.py with SMALL_ML100K and `overrides` applied."""
  from experiments.hstu_movielens import get_config

  cfg = get_config()
  for path, value in {**SMALL_ML100K, **overrides}.items():
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def small_ml100k_flags(**overrides) -> list[str]:
  """The same config as command-line flags of experiments/hstu_movielens.py."""
  return [f"--config.{k}={v}" for k, v in {**SMALL_ML100K, **overrides}.items()]


@pytest.fixture(scope="session")
def ml100k_config():
  """A factory: ml100k_config(**{'train.num_epochs': 3}) -> a fresh small ML-100K ConfigDict."""
  return small_ml100k_config


@pytest.fixture(scope="session")
def ml100k_flags():
  """A factory: the command-line flags giving ml100k_config(**overrides)."""
  return small_ml100k_flags


@pytest.fixture(scope="session")
def ml100k_task(data_dir):
  """genrec_jax.data.registry.load_task on ML-100K (loo, max_seq_len 50)."""
  from genrec_jax.data.registry import load_task

  return load_task(small_ml100k_config(), str(data_dir))
