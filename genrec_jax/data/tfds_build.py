"""Builds TFDS's MovieLens datasets (`movielens/{100k,1m}-{ratings,movies}`) without TensorFlow.

TFDS's own builder (tensorflow_datasets/structured/movielens.py) parses the GroupLens files, and
TFDS unzips them, with `tf.io.gfile`, so running it needs TensorFlow. `LocalMovielens` subclasses
it and keeps its name ('movielens'), configs, version (0.1.1) and features (`_info`), and replaces
only the parsing (our NumPy readers in `movielens.py`, which read the zip in place). What it writes
is therefore the same prepared dataset, in the same folder
(`TFDS_DATA_DIR/movielens/<config>/0.1.1/`), that `tfds.data_source` and
`tfds_source.load_ratings_tfds` read. It writes array_record, the format `tfds.data_source` needs.

Two inputs, chosen explicitly (nothing is downloaded):
  - `manual_dir`: a folder holding the official zip (`ml-100k.zip`, `ml-1m.zip`). TFDS's download
    manager checks its size and sha256 against TFDS's registered checksums
    (tensorflow_datasets/url_checksums/movielens.txt); if they differ, nothing is written and
    `build` raises our `DownloadError`.
  - `files_dir`: a folder of plain files (ml-100k: u.data, u.item, u.user; ml-1m: ratings.dat,
    movies.dat, users.dat). There is no zip, so no checksum: the dataset's description and
    metadata say it was built from local files, and from which folder.

Examples have the keys of TFDS's builder (the row in the ratings or movies file), so TFDS stores
them in the same order as an official build would (`tfds_source` relies on this to restore the
file order). On the ML-100K files, TFDS's own builder (with TensorFlow) and this one give equal
examples in the same order (tests/test_tfds_source.py, run where TensorFlow is installed).

Build (the command writes TFDS_DATA_DIR/movielens/{100k-ratings,100k-movies}/0.1.1/):
  python -m genrec_jax.data.tfds_build --dataset=ml-100k --tfds_data_dir=~/tensorflow_datasets \
      --manual_dir=~/Downloads          # holds the official ml-100k.zip (checksum verified)
  python -m genrec_jax.data.tfds_build --dataset=ml-100k --tfds_data_dir=~/tensorflow_datasets \
      --files_dir=data/ml-100k          # plain files, no checksum
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from genrec_jax.data import movielens
from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError, DownloadError

PathLike = str | os.PathLike

# Our dataset name -> TFDS's `format_version` of the movielens builder (configs '<v>-ratings' and
# '<v>-movies'). Only these two have TFDS configs among the datasets we read with demographics.
TFDS_VERSIONS = {"ml-100k": "100k", "ml-1m": "1m"}
TABLES = ("ratings", "movies")
INSTALL_HINT = "pip install -e '.[tfds]' (tensorflow-datasets and array_record; TensorFlow is not needed)"

# TFDS's movielens_parsing names genres as below; our readers keep the files' spelling.
_GENRE_TO_TFDS = {"Children's": "Children", "unknown": "Unknown"}
# ml-100k u.user occupation -> TFDS's label (shared with ml-1m), as in TFDS's movielens_parsing.
_OCCUPATION_100K = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer",
    "entertainment": "entertainment", "executive": "executive/managerial",
    "healthcare": "doctor/health care", "homemaker": "homemaker", "lawyer": "lawyer",
    "librarian": "librarian", "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer", "retired": "retired",
    "salesman": "sales/marketing", "scientist": "scientist", "student": "student",
    "technician": "technician/engineer", "writer": "writer",
}  # fmt: skip
# ml-1m users.dat occupation code 0..20 -> text (its README), as in TFDS's movielens_parsing.
_OCCUPATION_1M = (
    "other/not specified", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
_AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # ml-100k ages -> ml-1m's groups (lower bounds; else 1)


def import_tfds():
  """Imports tensorflow_datasets, or raises ImportError saying which extra to install."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"TFDS datasets need tensorflow-datasets: {INSTALL_HINT}. ({e})") from e
  return tfds


def tfds_config(name: str, table: str = "ratings") -> str:
  """The TFDS config of our dataset `name`, e.g. ('ml-1m', 'ratings') -> '1m-ratings'."""
  if name not in TFDS_VERSIONS:
    raise ValueError(f"TFDS has MovieLens {', '.join(TFDS_VERSIONS)} (with demographics) here; got {name!r}.")
  if table not in TABLES:
    raise ValueError(f"table must be one of {TABLES}, got {table!r}")
  return f"{TFDS_VERSIONS[name]}-{table}"


# ----------------------------------------------------------------------------------------------
# Examples, as TFDS's movielens_parsing yields them (keys = row in the file)
# ----------------------------------------------------------------------------------------------


def _files(name: str) -> dict[str, tuple[str, str]]:
  """(file name, format) of the ratings, movies and users files of `name`."""
  if name == "ml-100k":
    return {"ratings": ("u.data", "udata"), "movies": ("u.item", "uitem"), "users": ("u.user", "uuser")}
  return {"ratings": ("ratings.dat", "dat"), "movies": ("movies.dat", "dat"), "users": ("users.dat", "dat")}


def _member(location: PathLike, name: str, table: str) -> tuple[str, str]:
  """(path or 'archive.zip:ml-x/file', format) of `table`'s file in a folder or official zip."""
  filename, fmt = _files(name)[table]
  location = os.fspath(location)
  if location.lower().endswith(".zip"):  # read in place: TFDS's zip extractor needs TensorFlow
    return f"{location}:{name}/{filename}", fmt
  return os.path.join(location, filename), fmt


def movie_examples(location: PathLike, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(row, movie example) for each line of the movies file (features of '<v>-movies')."""
  movies = movielens.read_movies_file(*_member(location, name, "movies"))
  for row, (item, title, genres) in enumerate(zip(movies.item, movies.title, movies.genres)):
    yield row, {
        "movie_id": str(item),
        "movie_title": title,
        "movie_genres": [_GENRE_TO_TFDS.get(g, g) for g in genres],
    }


def _user_features(location: PathLike, name: str) -> dict[int, dict[str, Any]]:
  """User id -> the demographic features of TFDS's 100k/1m ratings configs."""
  users = movielens.read_users_file(*_member(location, name, "users"))
  out = {}
  for uid, gender, age, occupation, zip_code in zip(
      users.user, users.gender, users.age, users.occupation, users.zip_code
  ):
    if name == "ml-100k":
      if occupation not in _OCCUPATION_100K:
        raise DataFormatError(users.source, None, f"unknown occupation {occupation!r} of user {uid}")
      text, label = occupation, _OCCUPATION_100K[occupation]
      bucket = max([1, *(a for a in _AGE_BUCKETS if age >= a)])
      extra = {"raw_user_age": float(age)}
    else:
      text = _OCCUPATION_1M[int(occupation)]
      label = "student" if text in ("K-12 student", "college/grad student") else text
      bucket, extra = int(age), {}
    out[int(uid)] = {
        "user_gender": gender == "M",
        "bucketized_user_age": float(bucket),
        "user_occupation_label": label,
        "user_occupation_text": text,
        "user_zip_code": zip_code,
        **extra,
    }
  return out


def rating_examples(location: PathLike, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(row, rating example) for each line of the ratings file, joined with its movie and user."""
  movies = {ex["movie_id"]: ex for _, ex in movie_examples(location, name)}
  users = _user_features(location, name)
  r = movielens.read_ratings_file(*_member(location, name, "ratings"))
  for row in range(len(r)):
    user, item = int(r.user[row]), str(r.item[row])
    if item not in movies or user not in users:
      what = f"row {row}: movie {item} or user {user} is not in the movies/users file"
      raise DataFormatError(r.source, row + 1, what)
    yield row, {
        "user_id": str(user),
        "user_rating": float(r.rating[row]),
        "timestamp": int(r.timestamp[row]),
        **movies[item],
        **users[user],
    }


# ----------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------


@functools.cache
def builder_class():
  """`LocalMovielens`: TFDS's movielens builder with TensorFlow-free parsing (needs tfds)."""
  tfds = import_tfds()
  from tensorflow_datasets.structured import movielens as tfds_movielens  # pylint: disable=g-import-not-at-top

  class LocalMovielens(tfds_movielens.Movielens, skip_registration=True):
    """TFDS's `movielens` (same name, configs, version, features), parsed without TensorFlow."""

    name = "movielens"

    # The zips' expected sizes and sha256 are TFDS's own registered ones. (TFDS would look for
    # checksums.tsv next to this file, through a code path that imports importlib_resources,
    # which tensorflow-datasets 4.9.10 does not install on Python >= 3.9.)
    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
      return tfds.core.utils.tfds_path() / "url_checksums" / "movielens.txt"

    def __init__(self, *, files_dir: PathLike | None = None, **kwargs):
      self._files_dir = None if files_dir is None else pathlib.Path(files_dir).expanduser().absolute()
      super().__init__(**kwargs)

    def _info(self):
      info = super()._info()
      if self._files_dir is None:
        source = "the official zip (size and sha256 verified by TFDS)"
      else:
        source = f"local files in {self._files_dir} (no zip, so no checksum verified)"
      return tfds.core.DatasetInfo(
          builder=self,
          description=f"{info.description}\nBuilt by genrec_jax.data.tfds_build from {source}.",
          features=info.features,
          homepage=info.homepage,
          citation=info.citation,
          metadata=tfds.core.MetadataDict(genrec_source=source),
      )

    def _split_generators(self, dl_manager):
      if self._files_dir is not None:
        location = self._files_dir
      else:  # TFDS finds the zip in manual_dir and verifies its size and sha256 (no download)
        location = dl_manager.download(self.builder_config.download_url)
      return [tfds.core.SplitGenerator(name=tfds.Split.TRAIN, gen_kwargs={"location": os.fspath(location)})]

    def _generate_examples(self, location=None):
      name = f"ml-{self.builder_config.format_version}"
      if self.builder_config.table_option == "movies":
        yield from movie_examples(location, name)
      else:
        yield from rating_examples(location, name)

  return LocalMovielens


def build(
    tfds_data_dir: PathLike,
    name: str,
    *,
    manual_dir: PathLike | None = None,
    files_dir: PathLike | None = None,
    tables: Sequence[str] = TABLES,
) -> list[pathlib.Path]:
  """Prepares `movielens/<v>-<table>` for each table in `tfds_data_dir`; returns their folders.

  Exactly one of `manual_dir` (holds the official `<name>.zip`; TFDS verifies its checksum) and
  `files_dir` (plain files; not verified) must be given. A dataset already prepared there is kept
  as it is (TFDS does not rebuild it).
  """
  tfds_config(name)  # checks the name
  if (manual_dir is None) == (files_dir is None):
    raise ValueError("Pass exactly one of manual_dir (the official zip) and files_dir (plain files).")
  archive = None if manual_dir is None else pathlib.Path(manual_dir).expanduser() / f"{name}.zip"
  if archive is not None and not archive.is_file():
    raise DatasetNotFoundError(
        f"{archive} not found: put the official {name}.zip ({movielens.URL_TEMPLATE.format(name=name)}) "
        f"there, or build from plain files with files_dir."
    )
  if files_dir is not None:
    missing = [f for f, _ in _files(name).values() if not (pathlib.Path(files_dir) / f).is_file()]
    if missing:
      raise DatasetNotFoundError(f"{files_dir} lacks {', '.join(missing)} (MovieLens {name}).")
  tfds = import_tfds()
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top

  cls = builder_class()
  folders = []
  for table in tables:
    builder = cls(
        config=tfds_config(name, table),
        data_dir=os.fspath(pathlib.Path(tfds_data_dir).expanduser()),
        file_format="array_record",
        files_dir=files_dir,
    )
    # try_download_gcs=False: TFDS would otherwise first look for a prepared copy on its GCS bucket.
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir), try_download_gcs=False
    )
    try:
      builder.download_and_prepare(download_config=config)
    except download_manager.NonMatchingChecksumError as e:
      raise DownloadError(
          f"{archive} is not the official {name}.zip: its size or sha256 differs from the one TFDS "
          f"registered, so nothing was built. Use the official zip, or build from plain files "
          f"(files_dir) if you trust them. TFDS says: {e}"
      ) from e
    folders.append(pathlib.Path(builder.data_dir))
  return folders


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  try:
    folders = build(f.tfds_data_dir, f.dataset, manual_dir=f.manual_dir, files_dir=f.files_dir,
                    tables=f.tables)
  except (DataFormatError, DatasetNotFoundError, DownloadError, ImportError, ValueError) as e:
    raise SystemExit(f"error: {e}") from e
  for folder in folders:
    print(folder)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_enum("dataset", None, list(TFDS_VERSIONS), "MovieLens dataset to build.", required=True)
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir to write to.", required=True)
  flags.DEFINE_string("manual_dir", None, "Folder holding the official <dataset>.zip (verified).")
  flags.DEFINE_string("files_dir", None, "Folder of plain MovieLens files (not verified).")
  flags.DEFINE_list("tables", list(TABLES), "Which configs to build: ratings, movies.")
  app.run(main)
