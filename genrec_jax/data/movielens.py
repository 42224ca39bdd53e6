"""MovieLens readers (pure NumPy): ratings and movies, from plain files or the official zips.

Every dataset lives either as plain files in `DATA_DIR/<name>/` (e.g. DATA_DIR/ml-1m/ratings.dat)
or as the official GroupLens zip at `DATA_DIR/<name>.zip` (or `DATA_DIR/<name>/<name>.zip`), which
is read in place without extracting. Nothing is downloaded unless the caller passes download=True.

Ratings are parsed with a vectorised NumPy fast path (ml-1m's 1M lines in well under a second).
The fast path checks the structure of every line (field count, separators, characters), so a wrong
file cannot parse into garbage; when it rejects a chunk, a line-by-line rescan of that chunk finds
and reports the first bad line as a `DataFormatError` with path and line number.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pathlib
import re
import tempfile
import types
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError, DownloadError

DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m")
URL_TEMPLATE = "https://files.grouplens.org/datasets/movielens/{name}.zip"

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Ratings:
  """All ratings of a dataset, one row per rating, in file order (not sorted)."""

  user: np.ndarray  # int64 [R]
  item: np.ndarray  # int64 [R] original MovieLens movie ids, not remapped
  rating: np.ndarray  # float32 [R] (ml-10m and later have half stars)
  timestamp: np.ndarray  # int64 [R] unix seconds
  source: str  # path, or 'zip:member', it was read from

  def __len__(self) -> int:
    return len(self.user)


@dataclasses.dataclass(frozen=True)
class Movies:
  """The movie list of a dataset, in file order."""

  item: np.ndarray  # int64 [M] movie ids
  title: list[str]  # e.g. "Toy Story (1995)"
  genres: list[list[str]]  # e.g. ["Animation", "Children's", "Comedy"]; [] when none listed


@dataclasses.dataclass(frozen=True)
class Checksum:
  """Expected size and digest of an official zip, as recorded by a public source."""

  size: int | None  # bytes; None when the source records no size
  algorithm: str  # a hashlib name
  hexdigest: str


# Official zip checksums. Only values found in public sources are listed; a dataset missing
# here is refused by `download_zip` rather than accepted unverified.
CHECKSUMS: Mapping[str, Checksum] = types.MappingProxyType({
    # tensorflow/datasets: tensorflow_datasets/url_checksums/movielens.txt (size + sha256).
    "ml-100k": Checksum(
        4924029, "sha256", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    ),
    "ml-1m": Checksum(
        5917549, "sha256", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
    ),
    "ml-20m": Checksum(
        198702078, "sha256", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"
    ),
    "ml-25m": Checksum(
        261978986, "sha256", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"
    ),
    # eli-osherovich/papers_with_code: datasets/movielens/dl_config.py (md5 only; its md5s for
    # ml-1m, ml-20m and ml-25m agree with GroupLens' published .md5 files quoted elsewhere).
    "ml-10m": Checksum(None, "md5", "ce571fd55effeba0271552578f2648bd"),
})


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where a dataset's files are and how they are formatted."""

  zip_root: str  # top-level folder inside the official zip
  ratings_file: str
  ratings_fmt: str
  movies_file: str
  movies_fmt: str


_LAYOUTS: Mapping[str, _Layout] = types.MappingProxyType({
    "ml-100k": _Layout("ml-100k", "u.data", "udata", "u.item", "uitem"),
    "ml-1m": _Layout("ml-1m", "ratings.dat", "dat", "movies.dat", "dat"),
    "ml-10m": _Layout("ml-10M100K", "ratings.dat", "dat", "movies.dat", "dat"),
    "ml-20m": _Layout("ml-20m", "ratings.csv", "csv", "movies.csv", "csv"),
    "ml-25m": _Layout("ml-25m", "ratings.csv", "csv", "movies.csv", "csv"),
    "ml-32m": _Layout("ml-32m", "ratings.csv", "csv", "movies.csv", "csv"),
})

# The 19 ml-100k genres in flag order (from the ml-100k README), used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_RATINGS_SEPARATORS = types.MappingProxyType({"dat": b"::", "csv": b",", "udata": b"\t"})
_RATINGS_CSV_HEADER = b"userId,movieId,rating,timestamp"
_MOVIES_CSV_HEADER = ["movieId", "title", "genres"]
_RATING_COLUMNS = ("user id", "movie id", "rating", "timestamp")
_NO_GENRES = "(no genres listed)"
_CHUNK_BYTES = 1 << 21  # the fast path parses ~2 MiB at a time (cache-friendly, bounded memory)
_MAX_FIELD_CHARS = 15  # longer numbers are rejected: float64 is exact up to 15 digits
_ZIP_SOURCE = re.compile(r"(?P<zip>.+\.zip):(?P<member>.+)", re.IGNORECASE | re.DOTALL)


# ----------------------------------------------------------------------------------------------
# Locating a dataset
# ----------------------------------------------------------------------------------------------


def _layout(name: str) -> _Layout:
  if name not in _LAYOUTS:
    raise ValueError(f"Unknown MovieLens dataset {name!r}; expected one of {', '.join(DATASETS)}.")
  return _LAYOUTS[name]


def _not_found_message(root: pathlib.Path, name: str) -> str:
  layout = _layout(name)
  files = f"{layout.ratings_file} and {layout.movies_file}"
  if name == "ml-100k":
    files += " (u.genre too, if you have it)"
  url = URL_TEMPLATE.format(name=name)
  return (
      f"MovieLens {name} not found. Put {files} in {root / name}{os.sep} (or the official "
      f"{name}.zip at {root / (name + '.zip')}); download it from {url}, or pass --download "
      f"(needs internet). The data directory is {root}; change it with --data_dir or the env "
      f"var GENREC_DATA_DIR."
  )


def resolve_dataset_dir(data_dir: PathLike, name: str, *, download: bool = False) -> pathlib.Path:
  """Finds dataset `name` under `data_dir`.

  Returns `DATA_DIR/<name>` if it holds the ratings and movies files, else the official zip
  (`DATA_DIR/<name>.zip` or `DATA_DIR/<name>/<name>.zip`). If neither exists, downloads the zip
  when `download` is true and raises `DatasetNotFoundError` (saying what to put where) otherwise.
  """
  layout = _layout(name)
  root = pathlib.Path(data_dir).expanduser().absolute()
  folder = root / name
  if (folder / layout.ratings_file).is_file() and (folder / layout.movies_file).is_file():
    return folder
  for archive in (root / f"{name}.zip", folder / f"{name}.zip"):
    if archive.is_file():
      return archive
  if download:
    return download_zip(root, name)
  raise DatasetNotFoundError(_not_found_message(root, name))


def _dataset_file(location: pathlib.Path, name: str, filename: str) -> str:
  """The path (or 'zip:member') of `filename` inside a resolved dataset location."""
  if location.is_dir():
    return os.fspath(location / filename)
  return f"{location}:{_layout(name).zip_root}/{filename}"


def load_ratings(data_dir: PathLike, name: str, *, download: bool = False) -> Ratings:
  """Loads all ratings of MovieLens dataset `name` (one of DATASETS), in file order."""
  location = resolve_dataset_dir(data_dir, name, download=download)
  layout = _layout(name)
  return read_ratings_file(_dataset_file(location, name, layout.ratings_file), layout.ratings_fmt)


def filter_ratings(r: Ratings, min_rating: float = 0.0, min_count: int = 0) -> Ratings:
  """RecBole's data filtering, in its order: ratings below `min_rating` are dropped (its
  `val_interval`), then users and items with fewer than `min_count` ratings, again and again until
  none is left (its `user_inter_num_interval` = `item_inter_num_interval` = [min_count, inf)):
  each round counts users and items on the same remaining ratings and drops both at once.
  0 turns a filter off. RecBole's ML-1M benchmark (3, 10) leaves 834,449 ratings of 6,033 users
  and 3,123 items (RecBole reports 3,124 items: it counts its padding id)."""
  keep = r.rating >= min_rating if min_rating > 0 else np.ones(len(r), bool)
  while min_count > 0:
    _, u_inv, u_count = np.unique(r.user[keep], return_inverse=True, return_counts=True)
    _, i_inv, i_count = np.unique(r.item[keep], return_inverse=True, return_counts=True)
    ok = (u_count[u_inv] >= min_count) & (i_count[i_inv] >= min_count)
    if ok.all():
      break
    keep[np.flatnonzero(keep)[~ok]] = False
  return dataclasses.replace(r, user=r.user[keep], item=r.item[keep], rating=r.rating[keep],
                             timestamp=r.timestamp[keep])


def load_movies(data_dir: PathLike, name: str, *, download: bool = False) -> Movies:
  """Loads the movie list (ids, titles, genres) of MovieLens dataset `name`."""
  location = resolve_dataset_dir(data_dir, name, download=download)
  layout = _layout(name)
  return read_movies_file(_dataset_file(location, name, layout.movies_file), layout.movies_fmt)


# ----------------------------------------------------------------------------------------------
# Reading bytes from a file or a zip member
# ----------------------------------------------------------------------------------------------


def _split_zip_source(source: str) -> tuple[str, str] | None:
  """Splits 'archive.zip:member' into its parts, if `source` names a member of an existing zip."""
  match = _ZIP_SOURCE.fullmatch(source)
  if match is None or not os.path.isfile(match["zip"]):
    return None
  return match["zip"], match["member"]


def _read_zip_member(archive: str, member: str) -> bytes | None:
  """Reads one member of a zip; None if the zip has no such member."""
  try:
    with zipfile.ZipFile(archive) as zf:
      try:
        info = zf.getinfo(member)
      except KeyError:
        return None
      return zf.read(info)
  except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
    raise DataFormatError(
        archive,
        None,
        f"the zip archive is truncated or corrupt ({e}); delete it and re-download it",
    ) from e


def _read_source(source: PathLike) -> tuple[bytes, str]:
  """Returns the bytes of a file or 'zip:member' and the label to report errors against."""
  label = os.fspath(source)
  zip_parts = _split_zip_source(label)
  if zip_parts is None:
    return pathlib.Path(label).read_bytes(), label
  data = _read_zip_member(*zip_parts)
  if data is None:
    raise DataFormatError(
        zip_parts[0],
        None,
        f"the zip archive has no member {zip_parts[1]!r}; is it the official GroupLens zip?",
    )
  return data, label


def _read_sibling(source: str, filename: str) -> tuple[bytes, str] | None:
  """Reads `filename` from the folder (or zip folder) of `source`; None if it is not there."""
  zip_parts = _split_zip_source(source)
  if zip_parts is None:
    path = pathlib.Path(source).with_name(filename)
    return (path.read_bytes(), os.fspath(path)) if path.is_file() else None
  archive, member = zip_parts
  sibling = f"{member.rpartition('/')[0]}/{filename}".lstrip("/")
  data = _read_zip_member(archive, sibling)
  return None if data is None else (data, f"{archive}:{sibling}")


def _display(line: bytes) -> str:
  return line.decode("utf-8", errors="backslashreplace")


# ----------------------------------------------------------------------------------------------
# Ratings
# ----------------------------------------------------------------------------------------------


def read_ratings_file(path: PathLike, fmt: str) -> Ratings:
  """Reads a ratings file (or 'archive.zip:member') in format 'dat', 'csv' or 'udata'.

  dat: `UserID::MovieID::Rating::Timestamp` (ml-1m, ml-10m); csv: `userId,movieId,rating,timestamp`
  with that header (ml-20m and later); udata: tab-separated `user item rating timestamp` (ml-100k).
  """
  if fmt not in _RATINGS_SEPARATORS:
    formats = list(_RATINGS_SEPARATORS)
    raise ValueError(f"Unknown ratings format {fmt!r}; expected one of {formats}.")
  data, label = _read_source(path)
  sep = _RATINGS_SEPARATORS[fmt]
  user, item, rating, timestamp = _parse_ratings(data, sep, fmt == "csv", label)
  return Ratings(user=user, item=item, rating=rating, timestamp=timestamp, source=label)


def _parse_ratings(
    data: bytes, sep: bytes, has_header: bool, label: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Parses 4-column rating lines into (user, item, rating, timestamp), raising on a bad line."""
  if b"\r" in data:
    data = data.replace(b"\r\n", b"\n")
  if not data or data.isspace():
    raise DataFormatError(label, 1, "file is empty", _display(data.split(b"\n", 1)[0]))
  start, first_line = 0, 1
  if has_header:
    end = data.find(b"\n")
    end = len(data) if end < 0 else end
    if data[:end].strip() != _RATINGS_CSV_HEADER:
      what = f"expected the header {_RATINGS_CSV_HEADER.decode()!r}"
      raise DataFormatError(label, 1, what, _display(data[:end]))
    start, first_line = end + 1, 2
    if start >= len(data):
      raise DataFormatError(label, 2, "no ratings after the header", "")

  # One row per line (checked below), so the outputs can be allocated once and filled in place.
  n_rows = data.count(b"\n", start) + (not data.endswith(b"\n"))
  outputs = (
      np.empty(n_rows, np.int64),
      np.empty(n_rows, np.int64),
      np.empty(n_rows, np.float32),
      np.empty(n_rows, np.int64),
  )
  row = 0
  for begin, stop in _line_chunks(data, start, _CHUNK_BYTES):
    chunk = data[begin:stop]
    columns = _parse_chunk_fast(chunk, sep)
    if columns is None:
      _raise_first_bad_line(chunk, sep, first_line + row, label)
      raise DataFormatError(label, None, "could not parse the ratings (no single bad line found)")
    n = len(columns[0])
    for output, column in zip(outputs, columns):
      output[row : row + n] = column
    row += n
  assert row == n_rows, (row, n_rows)
  return outputs


def _line_chunks(data: bytes, start: int, size: int):
  """Yields (begin, stop) byte ranges of about `size` bytes that end just after a newline."""
  while start < len(data):
    stop = data.find(b"\n", min(start + size, len(data)) - 1)
    stop = len(data) if stop < 0 else stop + 1
    yield start, stop
    start = stop


def _parse_chunk_fast(chunk: bytes, sep: bytes) -> list[np.ndarray] | None:
  """Vectorised parse of whole lines `a<sep>b<sep>c<sep>d`; None if any line is not well formed.

  Checks that every line has exactly 4 non-empty fields of digits (and at most one '.' in the
  rating), so that anything the slow line-by-line check would reject is rejected here too.
  """
  if not chunk.endswith(b"\n"):
    chunk += b"\n"
  if len(sep) > 1:
    if b"\t" in chunk:
      return None
    chunk, delimiter = chunk.replace(sep, b"\t"), ord("\t")
  else:
    delimiter = sep[0]
  if chunk.translate(None, b"0123456789.\n" + bytes([delimiter])):
    return None  # some byte is not a digit, '.', the delimiter or a newline
  x = np.frombuffer(chunk, dtype=np.uint8)
  bounds = np.flatnonzero((x == delimiter) | (x == ord("\n")))
  if bounds.size % 4:
    return None
  bounds = bounds.reshape(-1, 4)
  if not ((x[bounds[:, 3]] == ord("\n")).all() and (x[bounds[:, :3]] == delimiter).all()):
    return None
  previous = np.concatenate([[-1], bounds.ravel()[:-1]]).reshape(-1, 4)
  lengths = bounds - previous - 1
  if lengths.min() < 1 or lengths.max() > _MAX_FIELD_CHARS:
    return None
  # '.' may only appear in the rating (the 3rd field of a line).
  dots = np.flatnonzero(x == ord("."))
  if dots.size and (np.searchsorted(bounds.ravel(), dots) % 4 != 2).any():
    return None
  columns = [_parse_integers(x, bounds[:, k], lengths[:, k]) for k in (0, 1, 3)]
  if dots.size:
    rating = _parse_decimals(x, bounds[:, 2], lengths[:, 2])
    if rating is None:
      return None
  else:
    rating = _parse_integers(x, bounds[:, 2], lengths[:, 2])
  columns.insert(2, rating)
  return columns


def _parse_integers(x: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Parses digit-only fields x[ends - lengths : ends] to float64, one decimal place at a time."""
  values = x[ends - 1] - 48.0
  for k in range(1, int(lengths.max())):
    if lengths.min() > k:
      values += (x[ends - 1 - k] - 48.0) * 10.0**k
    else:
      rows = np.flatnonzero(lengths > k)
      values[rows] += (x[ends[rows] - 1 - k] - 48.0) * 10.0**k
  return values


def _parse_decimals(x: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
  """Parses fields of digits with at most one '.' to float64; None if a field has two dots."""
  width = int(lengths.max())
  offsets = np.arange(-width, 0)
  # Right-align each field in a [n, width] matrix, padding with '0' on the left.
  chars = x[np.maximum(ends[:, None] + offsets, 0)]
  chars = np.where(offsets < -lengths[:, None], np.uint8(ord("0")), chars)
  dots = chars == ord(".")
  n_dots = dots.sum(axis=1)
  if n_dots.max() > 1 or (lengths - n_dots).min() < 1:
    return None
  digits = np.where(dots, 0, chars - np.uint8(ord("0"))).astype(np.float64)
  position = np.arange(width)
  dot_at = np.where(n_dots > 0, dots.argmax(axis=1), -1)[:, None]  # -1: no dot in this field
  # Power of ten of each digit, counting digits only (a dot to its right takes no place).
  exponents = (width - 1 - position) - (position < dot_at)
  mantissa = (digits * 10.0**exponents).sum(axis=1)
  fraction_digits = np.where(n_dots > 0, width - 1 - dot_at[:, 0], 0)
  # One correctly rounded division, so e.g. "3.7" gives the float closest to 3.7.
  return mantissa / 10.0**fraction_digits


_INTEGER = re.compile(rb"\d+")
_DECIMAL = re.compile(rb"\d+\.?\d*|\.\d+")


def _line_problem(line: bytes, sep: bytes) -> str | None:
  """What is wrong with one rating line, or None if it is fine (same rules as the fast path)."""
  if not line:
    return "unexpected blank line"
  fields = line.split(sep)
  if len(fields) != 4:
    return f"expected 4 fields separated by {sep.decode()!r}, found {len(fields)}"
  for k, (column, field) in enumerate(zip(_RATING_COLUMNS, fields)):
    pattern = _DECIMAL if k == 2 else _INTEGER
    kind = "a decimal number" if k == 2 else "a non-negative integer"
    if pattern.fullmatch(field) is None:
      return f"field {k + 1} ({column}) must be {kind}, found {_display(field)!r}"
    if len(field) > _MAX_FIELD_CHARS:
      return f"field {k + 1} ({column}) is longer than {_MAX_FIELD_CHARS} characters"
  return None


def _raise_first_bad_line(chunk: bytes, sep: bytes, first_line: int, label: str) -> None:
  """Rescans a chunk line by line and raises DataFormatError for its first bad line."""
  lines = chunk.split(b"\n")
  if lines[-1] == b"":
    lines.pop()  # the newline that ends the last line
  for offset, line in enumerate(lines):
    problem = _line_problem(line, sep)
    if problem is not None:
      raise DataFormatError(label, first_line + offset, problem, _display(line))


# ----------------------------------------------------------------------------------------------
# Movies
# ----------------------------------------------------------------------------------------------


def read_movies_file(path: PathLike, fmt: str) -> Movies:
  """Reads a movies file (or 'archive.zip:member') in format 'dat', 'csv' or 'uitem'.

  dat: `MovieID::Title::Genres` (ml-1m latin-1, ml-10m utf-8); csv: `movieId,title,genres` with
  that header and CSV quoting; uitem: ml-100k's `|`-separated u.item with 19 genre flags, named
  by u.genre next to it (or the standard names if u.genre is absent).
  """
  readers: Mapping[str, Callable[[bytes, str], Movies]] = {
      "dat": _parse_movies_dat,
      "csv": _parse_movies_csv,
      "uitem": _parse_movies_uitem,
  }
  if fmt not in readers:
    raise ValueError(f"Unknown movies format {fmt!r}; expected one of {list(readers)}.")
  data, label = _read_source(path)
  return readers[fmt](data, label)


def _decode(data: bytes) -> str:
  """Decodes utf-8 (ml-10m and later), falling back to latin-1 (ml-1m, ml-100k)."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def _text_lines(text: str, label: str) -> list[str]:
  """Splits text into lines, allowing one trailing newline; raises if the text is empty."""
  text = text.replace("\r\n", "\n")
  if not text.strip():
    raise DataFormatError(label, 1, "file is empty", text.split("\n", 1)[0])
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()
  return lines


def _movie_id(field: str, label: str, line_number: int, line: str) -> int:
  if not field.isascii() or not field.isdigit():
    raise DataFormatError(label, line_number, "the movie id must be a non-negative integer", line)
  return int(field)


def _split_genres(field: str) -> list[str]:
  return [] if field in ("", _NO_GENRES) else field.split("|")


def _movies(ids: list[int], titles: list[str], genres: list[list[str]]) -> Movies:
  return Movies(item=np.asarray(ids, dtype=np.int64), title=titles, genres=genres)


def _parse_movies_dat(data: bytes, label: str) -> Movies:
  ids, titles, genres = [], [], []
  for number, line in enumerate(_text_lines(_decode(data), label), start=1):
    if not line:
      raise DataFormatError(label, number, "unexpected blank line", line)
    fields = line.split("::")
    if len(fields) != 3:
      what = f"expected 3 fields separated by '::', found {len(fields)}"
      raise DataFormatError(label, number, what, line)
    ids.append(_movie_id(fields[0], label, number, line))
    titles.append(fields[1])
    genres.append(_split_genres(fields[2]))
  return _movies(ids, titles, genres)


def _parse_movies_csv(data: bytes, label: str) -> Movies:
  text = _decode(data)
  lines = _text_lines(text, label)  # only used to quote the offending line in errors
  reader = csv.reader(io.StringIO("\n".join(lines) + "\n"))
  header = next(reader)
  if header != _MOVIES_CSV_HEADER:
    what = f"expected the header {','.join(_MOVIES_CSV_HEADER)!r}"
    raise DataFormatError(label, 1, what, lines[0])
  ids, titles, genres = [], [], []
  for row in reader:
    number = reader.line_num
    line = lines[number - 1]
    if not row:
      raise DataFormatError(label, number, "unexpected blank line", line)
    if len(row) != 3:
      what = f"expected 3 comma-separated fields (movieId,title,genres), found {len(row)}"
      raise DataFormatError(label, number, what, line)
    ids.append(_movie_id(row[0], label, number, line))
    titles.append(row[1])
    genres.append(_split_genres(row[2]))
  if not ids:
    raise DataFormatError(label, 2, "no movies after the header", "")
  return _movies(ids, titles, genres)


def _parse_genre_names(data: bytes, label: str) -> tuple[str, ...]:
  """Parses ml-100k's u.genre (`name|index` lines) into names ordered by index."""
  named = {}
  for number, line in enumerate(data.decode("latin-1").splitlines(), start=1):
    if not line.strip():
      continue  # the official file ends with a blank line
    name, _, index = line.partition("|")
    if not index.isdigit():
      raise DataFormatError(label, number, "expected 'name|index'", line)
    named[int(index)] = name
  if sorted(named) != list(range(len(named))) or not named:
    raise DataFormatError(label, None, f"genre indices must be 0..n-1, found {sorted(named)}")
  return tuple(named[i] for i in range(len(named)))


def _parse_movies_uitem(data: bytes, label: str) -> Movies:
  genre_file = _read_sibling(label, "u.genre")
  names = ML100K_GENRES if genre_file is None else _parse_genre_names(*genre_file)
  n_fields = 5 + len(names)
  ids, titles, genres = [], [], []
  for number, line in enumerate(_text_lines(data.decode("latin-1"), label), start=1):
    fields = line.split("|")
    if len(fields) != n_fields:
      what = f"expected {n_fields} fields separated by '|', found {len(fields)}"
      raise DataFormatError(label, number, what, line)
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
      raise DataFormatError(label, number, "genre flags must be 0 or 1", line)
    ids.append(_movie_id(fields[0], label, number, line))
    titles.append(fields[1])
    genres.append([name for name, flag in zip(names, flags) if flag == "1"])
  return _movies(ids, titles, genres)


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def _open_url(url: str):
  return urllib.request.urlopen(url, timeout=60)


def download_zip(
    data_dir: PathLike,
    name: str,
    *,
    checksums: Mapping[str, Checksum] | None = None,
    urlopen: Callable[[str], object] | None = None,
    chunk_bytes: int = 1 << 20,
) -> pathlib.Path:
  """Downloads the official `<name>.zip` to `data_dir/<name>.zip`, verified against `checksums`.

  The bytes go to a temporary file in `data_dir` that is renamed into place only once its size
  and digest match, so an interrupted or wrong download never appears at the final path. Refuses
  datasets with no known checksum. `checksums` (default CHECKSUMS) and `urlopen` are injectable
  for tests.
  """
  _layout(name)
  expected = (CHECKSUMS if checksums is None else checksums).get(name)
  root = pathlib.Path(data_dir).expanduser().absolute()
  final = root / f"{name}.zip"
  url = URL_TEMPLATE.format(name=name)
  if expected is None:
    raise DownloadError(
        f"No verified checksum is known for {name}.zip, so it is not downloaded automatically. "
        f"Download {url} yourself, check it against the .md5 file GroupLens publishes next to "
        f"it, and put it at {final}."
    )
  root.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(prefix=f".{name}.zip.", suffix=".part", dir=root)
  try:
    with os.fdopen(fd, "wb") as out:
      size, digest = _fetch(url, out, expected.algorithm, urlopen or _open_url, chunk_bytes)
    if (expected.size is not None and size != expected.size) or digest != expected.hexdigest:
      raise DownloadError(
          f"Download of {url} failed verification: got {size} bytes with {expected.algorithm} "
          f"{digest}, expected {expected.size or '?'} bytes with {expected.hexdigest}. "
          f"Nothing was written to {final}; try again."
      )
    os.replace(partial, final)
  except BaseException:
    pathlib.Path(partial).unlink(missing_ok=True)
    raise
  return final


def _fetch(url: str, out, algorithm: str, urlopen, chunk_bytes: int) -> tuple[int, str]:
  """Streams `url` into `out` with a progress bar; returns (bytes written, hex digest)."""
  import tqdm  # pylint: disable=g-import-not-at-top  (only needed to download)

  hasher = hashlib.new(algorithm, usedforsecurity=False)
  size = 0
  try:
    with urlopen(url) as response:
      total = response.headers.get("Content-Length")
      with tqdm.tqdm(
          total=int(total) if total else None, unit="B", unit_scale=True, desc=url.rsplit("/")[-1]
      ) as progress:
        while block := response.read(chunk_bytes):
          out.write(block)
          hasher.update(block)
          size += len(block)
          progress.update(len(block))
  except (urllib.error.URLError, OSError) as e:
    raise DownloadError(
        f"Could not download {url} ({e}). It needs internet access; otherwise download it "
        f"elsewhere and put it in the data directory."
    ) from e
  return size, hasher.hexdigest()


# ----------------------------------------------------------------------------------------------
# Users (demographics): ml-1m users.dat, ml-100k u.user
# ----------------------------------------------------------------------------------------------

# The user file of each dataset that has one, and its format.
_USER_FILES: Mapping[str, tuple[str, str]] = types.MappingProxyType({
    "ml-100k": ("u.user", "uuser"),
    "ml-1m": ("users.dat", "dat"),
})
ML1M_AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # users.dat's age codes (lower bound of the group)


@dataclasses.dataclass(frozen=True)
class Users:
  """The users file of a dataset, in file order."""

  user: np.ndarray  # int64 [U] user ids
  gender: tuple[str, ...]  # 'M' | 'F'
  age: np.ndarray  # int64 [U]: ml-1m the age-group code (ML1M_AGE_GROUPS), ml-100k years
  occupation: tuple[str, ...]  # ml-1m the code '0'..'20', ml-100k the name (e.g. 'writer')
  zip_code: tuple[str, ...]  # as written (may be non-US, e.g. 'T8H1N')
  source: str

  def __len__(self) -> int:
    return len(self.user)


def load_users(data_dir: PathLike, name: str, *, download: bool = False) -> Users:
  """Loads the user demographics of `name` (ml-1m users.dat or ml-100k u.user)."""
  if name not in _USER_FILES:
    raise ValueError(f"MovieLens {name} has no users file; only {', '.join(_USER_FILES)} do.")
  location = resolve_dataset_dir(data_dir, name, download=download)
  filename, fmt = _USER_FILES[name]
  source = _dataset_file(location, name, filename)
  if location.is_dir() and not os.path.isfile(source):
    raise DatasetNotFoundError(f"MovieLens {name}: {source} not found; it comes with the official "
                               f"{name}.zip ({URL_TEMPLATE.format(name=name)}).")
  return read_users_file(source, fmt)


def read_users_file(path: PathLike, fmt: str) -> Users:
  """Reads a users file (or 'archive.zip:member') in format 'dat' or 'uuser'.

  dat (ml-1m): `UserID::Gender::Age::Occupation::Zip-code`, age and occupation integer codes;
  uuser (ml-100k): `user id|age|gender|occupation|zip code`, age in years, occupation a name.
  The first bad line raises `DataFormatError` with the file and line number.
  """
  if fmt not in ("dat", "uuser"):
    raise ValueError(f"Unknown users format {fmt!r}; expected 'dat' or 'uuser'.")
  data, label = _read_source(path)
  sep = "::" if fmt == "dat" else "|"
  users, genders, ages, occupations, zips = [], [], [], [], []
  seen: dict[int, int] = {}
  for number, line in enumerate(_text_lines(data.decode("latin-1"), label), start=1):
    fields = line.split(sep)
    if len(fields) != 5:
      raise DataFormatError(label, number, f"expected 5 fields separated by {sep!r}, found {len(fields)}", line)
    if fmt == "dat":
      uid, gender, age, occupation, zip_code = fields
    else:
      uid, age, gender, occupation, zip_code = fields
    if not (uid.isascii() and uid.isdigit()) or int(uid) == 0:
      raise DataFormatError(label, number, "the user id must be a positive integer", line)
    if int(uid) in seen:
      raise DataFormatError(label, number, f"user {int(uid)} is listed twice (first on line {seen[int(uid)]})", line)
    if gender not in ("M", "F"):
      raise DataFormatError(label, number, f"the gender must be 'M' or 'F', found {gender!r}", line)
    if not (age.isascii() and age.isdigit()):
      raise DataFormatError(label, number, "the age must be a non-negative integer", line)
    if fmt == "dat" and int(age) not in ML1M_AGE_GROUPS:
      raise DataFormatError(label, number, f"the age code must be one of {ML1M_AGE_GROUPS}", line)
    if fmt == "dat" and not (occupation.isascii() and occupation.isdigit() and int(occupation) <= 20):
      raise DataFormatError(label, number, "the occupation must be a code 0..20", line)
    if not occupation.strip() or not zip_code.strip():
      raise DataFormatError(label, number, "the occupation and zip code must not be empty", line)
    seen[int(uid)] = number
    users.append(int(uid))
    genders.append(gender)
    ages.append(int(age))
    occupations.append(occupation.strip())
    zips.append(zip_code.strip())
  return Users(np.asarray(users, np.int64), tuple(genders), np.asarray(ages, np.int64),
               tuple(occupations), tuple(zips), label)
