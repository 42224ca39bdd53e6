"""Datasets by name (data/registry.py): the loader table, register_dataset, and the docs' example."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import numpy as np
import pytest

from genrec_jax.config import ConfigError
from genrec_jax.data import registry, sequences
from genrec_jax.data.errors import DataFormatError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _example_config(**overrides):
  from conftest import SMALL_ML100K
  from experiments import example_events_dataset

  cfg = example_events_dataset.get_config()
  for path, value in {**SMALL_ML100K, "data.dataset": "events", **overrides}.items():
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def _assert_same_split(a, b):
  for part in ("train", "val", "test"):
    ea, eb = getattr(a.split, part), getattr(b.split, part)
    for f in dataclasses.fields(ea):
      xa, xb = getattr(ea, f.name), getattr(eb, f.name)
      assert (xa is None) == (xb is None), (part, f.name)
      if xa is not None:
        np.testing.assert_array_equal(xa, xb, err_msg=f"{part}.{f.name}")
  np.testing.assert_array_equal(a.catalog, b.catalog)
  assert a.num_items == b.num_items


def test_registered_events_file_gives_the_builtin_ml100k_split(data_dir, ml100k_config):
  """The docs' example dataset (u.data read by a 3-line loader) is split exactly as the built-in
  MovieLens-100K loader splits it: same users, sequences, tie order, targets and catalog."""
  ours = registry.load_task(_example_config(), str(data_dir))
  builtin = registry.load_task(ml100k_config(), str(data_dir))
  assert len(ours.split.test) == 943
  _assert_same_split(ours, builtin)


def test_register_dataset_names_are_unique_and_unknown_names_list_the_known_ones(ml100k_config):
  def loader(cfg, data_dir):
    return sequences.group_by_user(np.array([1, 1, 1, 2, 2, 2]), np.array([1, 2, 3, 2, 3, 1]),
                                   np.array([0, 1, 2, 0, 1, 2]))

  registry.register_dataset("tiny-test", loader)
  registry.register_dataset("tiny-test", loader)  # the same loader again (a module re-import) is fine
  with pytest.raises(ValueError, match="already registered"):
    registry.register_dataset("tiny-test", lambda cfg, d: loader(cfg, d))
  with pytest.raises(ValueError, match="already registered"):
    registry.register_dataset("ml-1m", loader)
  task = registry.load_task(ml100k_config(**{"data.dataset": "tiny-test"}), "unused")
  test = task.split.test
  np.testing.assert_array_equal(test.targets_UxN[np.arange(2), test.length_U - 1], [3, 1])
  with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*tiny-test"):
    registry.load_task(ml100k_config(**{"data.dataset": "nope"}), "unused")
  registry.LOADERS.pop("tiny-test")


def test_docs_dataset_example_is_the_experiment_and_runs(data_dir, tmp_path):
  from genrec_jax import recipes

  doc = (REPO / "docs" / "extending.md").read_text()
  section = doc[doc.index("## A new dataset in about 20 lines"):]
  block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert block == (REPO / "experiments" / "example_events_dataset.py").read_text()
  cfg = _example_config(**{"train.num_epochs": 1, "data.max_seq_len": 20})
  res = recipes.run_sequential(cfg, str(tmp_path / "events"), str(data_dir), False, False)
  on_disk = json.loads((tmp_path / "events" / "results.json").read_text())
  assert on_disk["dataset"] == "events" and on_disk["test"]["num_users"] == 943
  assert 0.0 < res["test"]["ndcg@10"] <= res["test"]["hr@10"] <= 1.0


def test_bad_events_file_names_the_line(tmp_path):
  from experiments import example_events_dataset

  (tmp_path / "ev.tsv").write_text("1\t2\t5\t100\n1\t3\tfive\t101\n")
  cfg = _example_config(**{"data.events_file": "ev.tsv"})
  with pytest.raises(DataFormatError, match=r"ev\.tsv:2: field 3") as err:
    example_events_dataset.load_events(cfg, str(tmp_path))
  assert err.value.line == 2 and "five" in str(err.value)
