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
