"""MovieLens from a prepared TFDS dataset (`movielens/{100k,1m}-{ratings,movies}`), no TensorFlow.

Reads through `tfds.data_source` (array_record files, random access), which needs
tensorflow-datasets and array_record but not TensorFlow. The dataset must already be prepared in
`tfds_data_dir` (`tfds_build.py` does that without TensorFlow; TFDS's own builder needs it).

TFDS's ids are strings ('138'); we return ints, the original MovieLens ids, so the result is the
`movielens.Ratings` / `movielens.Movies` the file loaders return, in the same (file) order:
TFDS stores the examples sorted by md5(split name + key) (tensorflow_datasets/core/hashing.py;
TFDS keeps it fixed, as changing it would reorder every dataset), and the movielens builder's key
is the row in the ratings (movies) file, so sorting the rows 0..R-1 by that hash says which row
each stored record is. The order matters: a user's ratings with the same timestamp keep file
order in `sequences.group_by_user` (75,772 of ML-100K's 100,000 ratings share their user's
timestamp with another one).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re

import ml_collections
import numpy as np

from genrec_jax.config import ConfigError
from genrec_jax.data import movielens, tfds_build
from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError

PathLike = str | os.PathLike
SOURCES = ("files", "tfds")
_SPLIT = "train"  # the movielens builder's only split
_CHUNK = 1 << 16  # records parsed per batch
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_GENRE_FROM_TFDS = {"Children": "Children's", "Unknown": "unknown"}  # back to the files' spelling


def _prepared(tfds_data_dir: PathLike | None, name: str, table: str):
  """(data dir, 'movielens/<config>:<version>', read-only builder) of a prepared dataset, or a
  clear error. Looks at the folders only, so it needs neither TFDS's dataset code nor TF."""
  tfds = tfds_build.import_tfds()
  config = tfds_build.tfds_config(name, table)
  root = pathlib.Path(tfds_data_dir or tfds.core.constants.DATA_DIR).expanduser().absolute()
  versions = [d for d in (root / "movielens" / config).glob("*")
              if _VERSION.fullmatch(d.name) and (d / "dataset_info.json").is_file()]
  if not versions:
    raise DatasetNotFoundError(
        f"TFDS dataset movielens/{config} is not prepared in {root} (no "
        f"{root / 'movielens' / config}/<version>/dataset_info.json). Build it without TensorFlow: "
        f"python -m genrec_jax.data.tfds_build --dataset={name} --tfds_data_dir={root} "
        f"--manual_dir=<folder with the official {name}.zip> (or --files_dir=<folder with the plain "
        f"files>); or with TensorFlow: tfds.builder('movielens/{config}', data_dir='{root}', "
        f"file_format='array_record').download_and_prepare(download_config=tfds.download."
        f"DownloadConfig(manual_dir=<same folder>)) (see data/README.md)."
    )
  folder = max(versions, key=lambda d: tuple(int(v) for v in d.name.split(".")))
  builder = tfds.builder_from_directory(os.fspath(folder))
  if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    raise DatasetNotFoundError(
        f"{folder} holds movielens/{config} as {builder.info.file_format.value}, but "
        f"tfds.data_source reads only array_record: rebuild it with --file_format=array_record "
        f"(python -m genrec_jax.data.tfds_build writes array_record)."
    )
  return root, f"movielens/{config}:{folder.name}", builder


# How to read one value of a feature from a tf.train.Example's Feature proto.
_GETTERS = {
    "bytes": lambda f: f.bytes_list.value[0],
    "float": lambda f: f.float_list.value[0],
    "int": lambda f: f.int64_list.value[0],
    "ints": lambda f: list(f.int64_list.value),
}


def _columns(tfds_data_dir: PathLike | None, name: str, table: str, fields: dict[str, str]):
  """(builder, {feature: its values in stored order}, file row of each stored record).

  `fields` maps feature names to a `_GETTERS` kind. Reads raw records through tfds.data_source and
  parses them with TFDS's own Example proto (no TensorFlow): ~6x faster than decoding every
  feature. Chunked, so only the wanted values of 1M ratings are held, not 1M protos.
  """
  tfds = tfds_build.import_tfds()
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  root, dataset, builder = _prepared(tfds_data_dir, name, table)
  source = tfds.data_source(dataset, split=_SPLIT, data_dir=os.fspath(root), download=False,
                            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  getters = [(key, _GETTERS[kind]) for key, kind in fields.items()]
  columns = {key: [] for key in fields}
  for start in range(0, len(source), _CHUNK):
    for raw in source.__getitems__(range(start, min(start + _CHUNK, len(source)))):
      feature = tf_example_pb2.Example.FromString(raw).features.feature
      for key, get in getters:
        columns[key].append(get(feature[key]))
  rows = stored_rows(len(source), _SPLIT, builder.info.disable_shuffling)
  return builder, columns, rows


def stored_rows(num_examples: int, split: str = _SPLIT, disable_shuffling: bool = False) -> np.ndarray:
  """int64 [R]: the key (file row) of each record as TFDS stores keys 0..R-1 of `split`.

  TFDS writes examples in increasing md5(split + str(key)) (128-bit, big-endian), unless the
  dataset disables shuffling (then in key order).
  """
  if disable_shuffling:
    return np.arange(num_examples, dtype=np.int64)
  salted = hashlib.md5(split.encode())
  digests = bytearray()
  for key in range(num_examples):
    h = salted.copy()
    h.update(str(key).encode())
    digests += h.digest()
  hash_Rx2 = np.frombuffer(bytes(digests), dtype=">u8").reshape(num_examples, 2)
  return np.lexsort((hash_Rx2[:, 1], hash_Rx2[:, 0])).astype(np.int64)


def _in_file_order(stored: np.ndarray, rows: np.ndarray) -> np.ndarray:
  out = np.empty_like(stored)
  out[rows] = stored
  return out


def _ints(values: list[bytes], what: str, source: str) -> np.ndarray:
  try:
    return np.asarray(values).astype(np.int64)
  except ValueError as e:
    raise DataFormatError(source, None, f"{what} ids must be integers ({e})") from e


def load_ratings_tfds(tfds_data_dir: PathLike | None, name: str) -> movielens.Ratings:
  """All ratings of `name` ('ml-100k' | 'ml-1m') from prepared TFDS `movielens/<v>-ratings`.

  The same arrays, in the same order, as `movielens.load_ratings` on the files it was built from.
  `tfds_data_dir` None or '' means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  """
  fields = {"user_id": "bytes", "movie_id": "bytes", "user_rating": "float", "timestamp": "int"}
  builder, col, rows = _columns(tfds_data_dir, name, "ratings", fields)
  label = f"tfds:{builder.data_dir}"
  return movielens.Ratings(
      user=_in_file_order(_ints(col["user_id"], "user", label), rows),
      item=_in_file_order(_ints(col["movie_id"], "movie", label), rows),
      rating=_in_file_order(np.asarray(col["user_rating"], np.float32), rows),
      timestamp=_in_file_order(np.asarray(col["timestamp"], np.int64), rows),
      source=label,
  )


def load_movies_tfds(tfds_data_dir: PathLike | None, name: str) -> movielens.Movies:
  """The movie list of `name` from prepared TFDS `movielens/<v>-movies`, in file order.

  Genre names are spelled as in the files ("Children's"; TFDS renames it "Children").
  """
  fields = {"movie_id": "bytes", "movie_title": "bytes", "movie_genres": "ints"}
  builder, col, rows = _columns(tfds_data_dir, name, "movies", fields)
  names = builder.info.features["movie_genres"].feature.names
  order = np.argsort(rows)  # the stored record of each file row
  item = _ints(col["movie_id"], "movie", f"tfds:{builder.data_dir}")
  titles = [col["movie_title"][j].decode("utf-8") for j in order]
  genres = [[_GENRE_FROM_TFDS.get(names[g], names[g]) for g in col["movie_genres"][j]] for j in order]
  return movielens.Movies(item=item[order], title=titles, genres=genres)


def _from_source(data: ml_collections.ConfigDict, data_dir: str, table: str):
  source = data.get("source", "files")
  name = data.dataset
  if source == "files":
    load = movielens.load_ratings if table == "ratings" else movielens.load_movies
    return load(data_dir, name, download=data.get("download", False))
  if source != "tfds":
    raise ConfigError(f"unknown data.source {source!r}; expected one of {SOURCES}")
  if name not in tfds_build.TFDS_VERSIONS:
    raise ConfigError(f"data.source='tfds' has MovieLens {', '.join(tfds_build.TFDS_VERSIONS)}; got {name!r}")
  load = load_ratings_tfds if table == "ratings" else load_movies_tfds
  try:
    return load(data.get("tfds_data_dir", ""), name)
  except ImportError as e:  # the tfds extra is not installed: a config this machine cannot run
    raise ConfigError(f"data.source='tfds': {e}") from e


def ratings_from(data: ml_collections.ConfigDict, data_dir: str) -> movielens.Ratings:
  """Ratings of MovieLens `data.dataset` from `data.source`: 'files' (in data_dir) or 'tfds'
  (a prepared dataset in `data.tfds_data_dir`, '' = TFDS's default; needs the tfds extra)."""
  return _from_source(data, data_dir, "ratings")


def movies_from(data: ml_collections.ConfigDict, data_dir: str) -> movielens.Movies:
  """Movies of MovieLens `data.dataset` from `data.source` (see `ratings_from`)."""
  return _from_source(data, data_dir, "movies")


def load_movielens(
    data: ml_collections.ConfigDict, data_dir: str
) -> tuple[movielens.Ratings, movielens.Movies]:
  """(ratings_from, movies_from) of `data`."""
  return ratings_from(data, data_dir), movies_from(data, data_dir)
