"""TFDS as a MovieLens source: build a real TFDS dataset (array_record) from the real ML-100K files
and check that reading it gives exactly what the file loaders give.

What is built from what (no official GroupLens zip is available offline):
  - `built` : tfds_build from the plain ML-100K files in the shared data dir (no zip, no checksum).
  - zip tests: those files zipped into the official layout (`ml-100k/u.data`, ...). The bytes differ
    from the official zip, so TFDS's registered sha256 rejects it (tested); the successful zip build
    pins that zip's own checksum in place of TFDS's (tested for the movies table only, for time).
  - TensorFlow test (skipped without TensorFlow): TFDS's own movielens builder, whose parsing needs
    TF, on the same zip (pinned checksum), must give the same examples as our TF-free builder.
Needs tensorflow-datasets (the `tfds` extra); TensorFlow only for the last test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import sys
import zipfile

import ml_collections
import numpy as np
import pytest

from genrec_jax.config import ConfigError
from genrec_jax.data import movielens, tfds_build, tfds_source
from genrec_jax.data.errors import DatasetNotFoundError, DownloadError

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tfds = pytest.mark.skipif(
    not HAS_TFDS, reason=f"tensorflow-datasets not installed: {tfds_build.INSTALL_HINT}")
URL_100K = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
_ZIP_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.info", "u.occupation", "README")


def _data_cfg(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"dataset": "ml-100k", "download": False, "source": "tfds",
                                    "tfds_data_dir": "", **kw})


def _zip_ml100k(src: pathlib.Path, manual_dir: pathlib.Path) -> pathlib.Path:
  """The local ML-100K files in the official zip's layout (ml-100k/<file>); not the official bytes."""
  manual_dir.mkdir(parents=True, exist_ok=True)
  archive = manual_dir / "ml-100k.zip"
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
    for name in _ZIP_FILES:
      zf.write(src / name, f"ml-100k/{name}")
  return archive


def _pinned(base, archive: pathlib.Path, tsv: pathlib.Path):
  """`base` (a movielens builder class) expecting `archive`'s size and sha256 for the ml-100k URL."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data = archive.read_bytes()
  tsv.write_text(f"{URL_100K}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\tml-100k.zip\n")

  class Pinned(base, skip_registration=True):
    name = "movielens"

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
      return tsv

  return Pinned


# ------------------------------------------------------------------------------ without tfds ----


def test_missing_tfds_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` now raises ImportError
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[tfds\]'"):
    tfds_source.load_movielens(_data_cfg(), "unused")
  with pytest.raises(ImportError, match="tensorflow-datasets"):
    tfds_source.load_ratings_tfds("unused", "ml-100k")


def test_bad_source_or_dataset_is_a_config_error(data_dir, ml100k_config):
  with pytest.raises(ConfigError, match="unknown data.source"):
    tfds_source.load_movielens(_data_cfg(source="hdf5"), str(data_dir))
  with pytest.raises(ConfigError, match="ml-100k, ml-1m"):
    tfds_source.load_movielens(_data_cfg(dataset="ml-20m"), str(data_dir))
  from genrec_jax.data.registry import load_task  # pylint: disable=g-import-not-at-top

  cfg = ml100k_config(**{"data.dataset": "amazon-beauty", "data.source": "tfds"})
  with pytest.raises(ConfigError, match="for MovieLens"):
    load_task(cfg, str(data_dir))


@needs_tfds
def test_stored_rows_is_tfds_hash_order():
  """Naive reference: TFDS's Hasher (md5 of salt + key), keys sorted by it."""
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top

  hasher = hashing.Hasher("train")
  expected = sorted(range(3000), key=hasher.hash_key)
  np.testing.assert_array_equal(tfds_source.stored_rows(3000, "train"), expected)
  np.testing.assert_array_equal(tfds_source.stored_rows(5, "train", disable_shuffling=True), np.arange(5))


# ------------------------------------------------------------- a real build from ML-100K files ----


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir) -> pathlib.Path:
  """movielens/100k-ratings and 100k-movies built (array_record, no TF) from the real files."""
  if not HAS_TFDS:
    pytest.skip(f"tensorflow-datasets not installed: {tfds_build.INSTALL_HINT}")
  root = tmp_path_factory.mktemp("tfds")
  tf_before = "tensorflow" in sys.modules
  folders = tfds_build.build(root, "ml-100k", files_dir=data_dir / "ml-100k")
  assert tf_before or "tensorflow" not in sys.modules  # the build does not import TensorFlow
  assert [f.relative_to(root).as_posix() for f in folders] == [
      "movielens/100k-ratings/0.1.1", "movielens/100k-movies/0.1.1"]
  return root


@needs_tfds
def test_build_stores_the_official_records_first(built):
  """The first stored records equal those TFDS's catalog and tutorials show for the official
  movielens/100k-ratings and 100k-movies (same keys -> same hash order, same feature values)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  ratings = tfds.data_source("movielens/100k-ratings", split="train", data_dir=built, download=False)
  first = ratings[0]
  assert (first["user_id"], first["movie_id"], first["timestamp"]) == (b"138", b"357", 879024327)
  assert (first["user_rating"], first["raw_user_age"], first["bucketized_user_age"]) == (4.0, 46.0, 45.0)
  assert first["user_occupation_text"] == b"doctor" and first["user_occupation_label"] == 4
  assert [ratings[i]["timestamp"] for i in (1, 2)] == [875654590, 882075110]
  movie = tfds.data_source("movielens/100k-movies", split="train", data_dir=built, download=False)[0]
  assert movie["movie_id"] == b"1681" and movie["movie_title"] == b"You So Crazy (1994)"
  assert list(movie["movie_genres"]) == [4]  # Children


@needs_tfds
def test_ratings_equal_the_file_loader(built, data_dir):
  got = tfds_source.load_ratings_tfds(built, "ml-100k")
  want = movielens.load_ratings(data_dir, "ml-100k")
  assert len(got) == 100_000 and got.source.startswith("tfds:")
  for field in ("user", "item", "rating", "timestamp"):  # same values in the same (file) order
    a, b = getattr(got, field), getattr(want, field)
    assert a.dtype == b.dtype, field
    np.testing.assert_array_equal(a, b, err_msg=field)
  # ... hence the same (user, item, rating, timestamp) multiset
  rows = lambda r: np.sort(np.rec.fromarrays([r.user, r.item, r.rating, r.timestamp]))  # noqa: E731
  np.testing.assert_array_equal(rows(got), rows(want))


@needs_tfds
def test_movies_equal_the_file_loader(built, data_dir):
  got = tfds_source.load_movies_tfds(built, "ml-100k")
  want = movielens.load_movies(data_dir, "ml-100k")
  np.testing.assert_array_equal(got.item, want.item)
  assert got.title == want.title and got.genres == want.genres


@needs_tfds
def test_load_task_from_tfds_gives_the_same_split(built, data_dir, ml100k_config, ml100k_task):
  from genrec_jax.data.registry import load_task  # pylint: disable=g-import-not-at-top

  task = load_task(ml100k_config(**{"data.source": "tfds", "data.tfds_data_dir": str(built)}), str(data_dir))
  want = ml100k_task  # data.source='files'
  assert task.num_items == want.num_items
  np.testing.assert_array_equal(task.catalog, want.catalog)
  for part in ("train", "val", "test"):
    a, b = getattr(task.split, part), getattr(want.split, part)
    for field in ("ids_UxN", "ts_UxN1", "targets_UxN", "length_U", "user_U"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{part}.{field}")


@needs_tfds
def test_not_prepared_says_how_to_build(tmp_path):
  with pytest.raises(DatasetNotFoundError) as e:
    tfds_source.load_ratings_tfds(tmp_path, "ml-1m")
  msg = str(e.value)
  assert "movielens/1m-ratings is not prepared" in msg and str(tmp_path) in msg
  assert "python -m genrec_jax.data.tfds_build --dataset=ml-1m" in msg and "file_format='array_record'" in msg


# ------------------------------------------------------------------------ from a zip (manual_dir) ----


@needs_tfds
def test_zip_with_other_bytes_fails_tfds_checksum(tmp_path, data_dir):
  _zip_ml100k(data_dir / "ml-100k", tmp_path / "manual")
  with pytest.raises(DownloadError, match="not the official ml-100k.zip(.|\n)*50d2a982c669"):  # TFDS's sha256
    tfds_build.build(tmp_path / "out", "ml-100k", manual_dir=tmp_path / "manual", tables=("movies",))
  with pytest.raises(DatasetNotFoundError, match="not prepared"):  # nothing was written
    tfds_source.load_movies_tfds(tmp_path / "out", "ml-100k")
  with pytest.raises(DatasetNotFoundError, match="ml-1m.zip not found"):
    tfds_build.build(tmp_path / "out", "ml-1m", manual_dir=tmp_path / "manual")


@needs_tfds
def test_zip_with_matching_checksum_builds(tmp_path, data_dir, monkeypatch):
  archive = _zip_ml100k(data_dir / "ml-100k", tmp_path / "manual")
  pinned = _pinned(tfds_build.builder_class(), archive, tmp_path / "pin.tsv")
  monkeypatch.setattr(tfds_build, "builder_class", lambda: pinned)
  tfds_build.build(tmp_path / "out", "ml-100k", manual_dir=archive.parent, tables=("movies",))
  got = tfds_source.load_movies_tfds(tmp_path / "out", "ml-100k")
  want = movielens.load_movies(data_dir, "ml-100k")
  np.testing.assert_array_equal(got.item, want.item)
  assert got.title == want.title and got.genres == want.genres


@pytest.mark.skipif(not (HAS_TFDS and HAS_TF),
                    reason="needs TensorFlow (TFDS's own movielens builder parses with tf.io.gfile)")
def test_tfds_own_builder_gives_the_same_examples(tmp_path, data_dir, built):
  """TFDS's builder (TF parsing) and ours on the same files: equal examples in the same order.

  (Compared as parsed protos: the serialized map order differs with and without TF.)"""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.structured import movielens as tfds_movielens  # pylint: disable=g-import-not-at-top

  archive = _zip_ml100k(data_dir / "ml-100k", tmp_path / "manual")
  official = _pinned(tfds_movielens.Movielens, archive, tmp_path / "pin.tsv")
  for config in ("100k-movies", "100k-ratings"):
    builder = official(config=config, data_dir=str(tmp_path / "out"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(archive.parent), try_download_gcs=False))
    examples = []
    for root in (tmp_path / "out", built):
      source = tfds.data_source(f"movielens/{config}", split="train", data_dir=root, download=False,
                                deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
      examples.append([tf_example_pb2.Example.FromString(r) for r in source.__getitems__(range(len(source)))])
    assert len(examples[0]) == len(examples[1]) and examples[0] == examples[1], config
