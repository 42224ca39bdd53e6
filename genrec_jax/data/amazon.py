"""Amazon review datasets in the S3-Rec/P5 format (pure NumPy): Beauty, Sports_and_Outdoors.

A dataset is a folder `DATA_DIR/<name>/` holding
  <stem>.txt                   one line per user: `user_id item_1 item_2 ...` (whitespace-separated
                               positive ints, items in chronological order; no timestamps)
  <stem>_item2attributes.json  optional: {"item_id": [attribute_id, ...], ...}
  <datamaps>.json              optional, P5's datamaps: id2item (ASINs), id2user, id2attribute, ...
as shipped by S3-Rec (RUCAIBox/CIKM2020-S3Rec, data/) and P5. These files have no official
download with a checksum, so nothing is ever downloaded; a missing file raises
`DatasetNotFoundError` that says which file to put where.

The sequence file is parsed with a vectorised NumPy pass (Beauty's 22k lines in milliseconds) that
finds every kind of bad line at once; the first bad line is then described by a line-by-line check
and reported as a `DataFormatError` with path and line number.

Attribute names. The P5 datamaps index their own attribute vocabulary (brands and categories,
2,320 ids for Beauty), not the ids of S3-Rec's item2attributes file (637 ids for Beauty): read
through id2attribute, Beauty item 1's attributes [173, 1, 162, 171] would be four different
brands. So names are attached only when the datamaps verifiably describe the attribute file (its
`attributeid2num` counts equal the per-attribute item counts of the file); otherwise
`attribute_names` is None and `attribute_names_problem` says why. Item ASINs (id2item) do match:
P5's sequence file is S3-Rec's, byte for byte (see SOURCE.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import re
import types
from collections.abc import Mapping
from typing import NoReturn

import numpy as np

from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError
from genrec_jax.data.sequences import UserSequences, group_by_user

PathLike = str | os.PathLike

S3REC_URL = "https://github.com/RUCAIBox/CIKM2020-S3Rec (folder data/)"
P5_DATAMAPS_URL = "https://github.com/Wenyueh/LLM-RecSys-ID (data/<dataset>/datamaps.json)"


@dataclasses.dataclass(frozen=True)
class Files:
  """Where one named dataset's files are, relative to the data directory."""

  directory: str  # folder under DATA_DIR
  stem: str  # <stem>.txt and <stem>_item2attributes.json
  datamaps: str  # P5 datamaps file name
  p5_name: str  # the dataset's folder in the P5 repositories (data/<p5_name>/datamaps.json)

  @property
  def sequences(self) -> str:
    return f"{self.stem}.txt"

  @property
  def attributes(self) -> str:
    return f"{self.stem}_item2attributes.json"


DATASETS: Mapping[str, Files] = types.MappingProxyType({
    "amazon-beauty": Files("amazon-beauty", "Beauty", "p5_beauty_datamaps.json", "beauty"),
    "amazon-sports": Files(
        "amazon-sports", "Sports_and_Outdoors", "p5_sports_datamaps.json", "sports"
    ),
})

_MAX_DIGITS = 18  # ids of up to 18 digits fit in int64
_MAX_INT32 = 2**31 - 1  # attribute ids are stored as int32
_TO_SPACE = bytes.maketrans(b"\t\r\x0b\x0c", b"    ")  # bytes.split() whitespace, bar '\n'


@dataclasses.dataclass(frozen=True)
class SequenceData:
  """One dataset in the S3-Rec/P5 format: item sequences per user, item attributes, names."""

  users: np.ndarray  # int64 [U] user ids, in file order
  offsets: np.ndarray  # int64 [U + 1]: user k's items are items[offsets[k] : offsets[k + 1]]
  items: np.ndarray  # int64 [T] item ids, each user's in file (= chronological) order
  num_items: int  # item ids are 1..num_items (max id over the sequences and the attribute file)
  # int32 [num_items + 1, A]: row i = item i's attribute ids in file order (duplicates kept),
  # 0-padded; row 0 and items without an entry are all 0. None without an attribute file.
  attributes: np.ndarray | None
  attribute_names: tuple[str, ...] | None  # [a] = name of attribute id a; [0] = ''
  attribute_names_problem: str | None  # why the datamaps' names were not attached, if not
  item_asins: tuple[str, ...] | None  # [i] = ASIN of item i; [0] = ''. None without datamaps.
  sources: tuple[str, ...]  # the files read

  @property
  def num_users(self) -> int:
    return len(self.users)

  @property
  def num_interactions(self) -> int:
    return len(self.items)

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def sequence(self, k: int) -> np.ndarray:
    """The item sequence of the k-th user in file order (not user id k)."""
    return self.items[self.offsets[k] : self.offsets[k + 1]]


# ----------------------------------------------------------------------------------------------
# Locating and loading a named dataset
# ----------------------------------------------------------------------------------------------


def _files(name: str) -> Files:
  if name not in DATASETS:
    raise ValueError(f"Unknown Amazon dataset {name!r}; expected one of {', '.join(DATASETS)}.")
  return DATASETS[name]


def _not_found_message(root: pathlib.Path, name: str) -> str:
  f = _files(name)
  folder = root / f.directory
  return (
      f"Amazon dataset {name} not found: expected {folder / f.sequences}. Put {f.sequences} "
      f"(required) and {f.attributes} (optional, item attributes) in {folder}{os.sep}, taken "
      f"from the S3-Rec repository {S3REC_URL}; optionally add P5's datamaps.json (item ASINs) "
      f"from {P5_DATAMAPS_URL.replace('<dataset>', f.p5_name)}, renamed to {f.datamaps}. These "
      f"files have no official download URL with a checksum, so they are never downloaded "
      f"(--download does not apply). The data directory is {root}; change it with --data_dir "
      f"or the env var GENREC_DATA_DIR."
  )


def load(data_dir: PathLike, name: str, *, download: bool = False) -> SequenceData:
  """Loads Amazon dataset `name` (one of DATASETS) from `data_dir/<directory>/`.

  The attribute and datamaps files are read when present. `download` exists for symmetry with
  the MovieLens loader: there is nothing to download, so a missing dataset always raises
  `DatasetNotFoundError`.
  """
  del download  # no verifiable official download exists; the error message says so
  f = _files(name)
  root = pathlib.Path(data_dir).expanduser().absolute()
  folder = root / f.directory
  sequences = folder / f.sequences
  if not sequences.is_file():
    raise DatasetNotFoundError(_not_found_message(root, name))
  attributes = folder / f.attributes
  datamaps = folder / f.datamaps
  return read_dataset(
      sequences,
      attributes if attributes.is_file() else None,
      datamaps if datamaps.is_file() else None,
  )


def read_dataset(
    sequences_path: PathLike,
    attributes_path: PathLike | None = None,
    datamaps_path: PathLike | None = None,
) -> SequenceData:
  """Reads `<name>.txt`, and optionally `<name>_item2attributes.json` and P5 datamaps."""
  users, offsets, items = read_sequences_file(sequences_path)
  sources = [os.fspath(sequences_path)]
  num_items = int(items.max())
  attributes = None
  if attributes_path is not None:
    attr_items, attr_offsets, attr_values = read_item_attributes_file(attributes_path)
    sources.append(os.fspath(attributes_path))
    if len(attr_items):
      num_items = max(num_items, int(attr_items.max()))
    attributes = _padded_attributes(attr_items, attr_offsets, attr_values, num_items)
  names = problem = asins = None
  if datamaps_path is not None:
    maps = read_datamaps_file(datamaps_path)
    sources.append(os.fspath(datamaps_path))
    asins = _check_datamaps(maps, users, num_items, sources)
    names, problem = _attribute_names(maps, attributes)
  return SequenceData(
      users=users,
      offsets=offsets,
      items=items,
      num_items=num_items,
      attributes=attributes,
      attribute_names=names,
      attribute_names_problem=problem,
      item_asins=asins,
      sources=tuple(sources),
  )


def to_user_sequences(data: SequenceData) -> UserSequences:
  """The data as `UserSequences`, with each event's 1-based position as its timestamp.

  There are no timestamps, so positions stand in for them: the stable chronological order is the
  file order. The catalog is every item id 1..num_items, so items that only occur in the
  attribute file are still ranked and sampled.
  """
  lengths = data.lengths()
  user = np.repeat(data.users, lengths)
  position = np.arange(data.num_interactions) - np.repeat(data.offsets[:-1], lengths) + 1
  catalog = np.arange(1, data.num_items + 1, dtype=np.int64)
  return group_by_user(user, data.items, position, catalog=catalog)


# ----------------------------------------------------------------------------------------------
# <name>.txt: `user_id item_1 item_2 ...`
# ----------------------------------------------------------------------------------------------


def _display(line: bytes) -> str:
  return line.rstrip(b"\r").decode("utf-8", errors="backslashreplace")


def read_sequences_file(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads `user_id item_1 item_2 ...` lines into (users [U], offsets [U + 1], items [T]).

  Tokens are separated by any ASCII whitespace (CRLF line ends are fine). Every line must hold a
  user id and at least one item, all ids must be integers >= 1, and no user id may repeat.
  """
  label = os.fspath(path)
  data = pathlib.Path(label).read_bytes()
  if not data.strip():
    raise DataFormatError(label, 1, "file is empty", _display(data.split(b"\n", 1)[0]))
  clean = data.translate(_TO_SPACE)
  x = np.frombuffer(clean, np.uint8)
  newlines = np.flatnonzero(x == ord("\n"))
  n_lines = len(newlines) + (not clean.endswith(b"\n"))
  digit = (x >= ord("0")) & (x <= ord("9"))

  # Tokens are maximal runs of digits; anything that is not a digit, space or newline is bad.
  edges = np.flatnonzero(np.diff(np.concatenate([[False], digit, [False]]).astype(np.int8)))
  starts, ends = edges[0::2], edges[1::2]
  token_line = np.searchsorted(newlines, starts)  # 0-based line of each token
  counts = np.bincount(token_line, minlength=n_lines)
  lengths = ends - starts
  nonzero_digits = np.concatenate([[0], np.cumsum(digit & (x != ord("0")))])
  is_zero = nonzero_digits[ends] == nonzero_digits[starts]
  bad_bytes = np.flatnonzero(~(digit | (x == ord(" ")) | (x == ord("\n"))))

  bad_lines = [
      np.searchsorted(newlines, bad_bytes[:1]),  # first non-integer character
      np.flatnonzero(counts < 2)[:1],  # blank line, or a user id with no items
      token_line[lengths > _MAX_DIGITS][:1],
      token_line[is_zero][:1],
  ]
  first_bad = min((int(b[0]) for b in bad_lines if len(b)), default=None)

  values = _parse_digits(x, ends, np.minimum(lengths, _MAX_DIGITS))
  first_token = np.cumsum(counts) - counts  # valid for lines with counts > 0
  has_user = np.flatnonzero(counts > 0)
  user_of_line = values[first_token[has_user]]
  duplicate = _first_duplicate(user_of_line)  # (index of the repeat, index of its first use)
  if duplicate is not None and (first_bad is None or has_user[duplicate[0]] < first_bad):
    line, first = has_user[duplicate[0]], has_user[duplicate[1]]
    text = data.split(b"\n")[line]
    what = f"duplicate user id {user_of_line[duplicate[0]]} (first on line {first + 1})"
    raise DataFormatError(label, int(line) + 1, what, _display(text))
  if first_bad is not None:
    text = data.split(b"\n")[first_bad]
    what = _line_problem(text) or "could not parse this line"
    raise DataFormatError(label, first_bad + 1, what, _display(text))

  is_item = np.ones(len(values), bool)
  is_item[first_token] = False
  offsets = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int64)
  return values[first_token].astype(np.int64), offsets, values[is_item].astype(np.int64)


def _parse_digits(x: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Parses the digit runs x[ends - lengths : ends] into int64, one decimal place at a time."""
  values = np.zeros(len(ends), np.int64)
  for k in range(int(lengths.max(initial=0))):
    rows = slice(None) if lengths.min() > k else np.flatnonzero(lengths > k)
    values[rows] += (x[ends[rows] - 1 - k].astype(np.int64) - ord("0")) * 10**k
  return values


def _first_duplicate(values: np.ndarray) -> tuple[int, int] | None:
  """(index, index of the first equal value) of the earliest repeated value, or None."""
  order = np.argsort(values, kind="stable")
  repeat = np.flatnonzero(values[order][1:] == values[order][:-1])
  if not len(repeat):
    return None
  index = int(order[1:][repeat].min())
  return index, int(np.flatnonzero(values == values[index])[0])


def _line_problem(line: bytes) -> str | None:
  """What is wrong with one sequence line, or None if it is fine (same rules as the fast path)."""
  tokens = line.split()
  if not tokens:
    return "unexpected blank line (expected 'user_id item_1 item_2 ...')"
  for k, token in enumerate(tokens):
    column = "the user id" if k == 0 else f"item {k}"
    if not token.isdigit():
      return f"{column} must be a positive integer, found {_display(token)!r}"
    if len(token) > _MAX_DIGITS:
      return f"{column} is longer than {_MAX_DIGITS} digits"
    if int(token) == 0:
      return f"{column} is 0; ids start from 1 (0 is the padding id)"
  if len(tokens) == 1:
    return f"user {int(tokens[0])} has no items (expected 'user_id item_1 item_2 ...')"
  return None


# ----------------------------------------------------------------------------------------------
# JSON files
# ----------------------------------------------------------------------------------------------


class _Pairs(list):
  """A JSON object as its (key, value) pairs in file order, so repeated keys are visible."""


def _load_json(path: PathLike) -> tuple[object, str, str]:
  """Parses a JSON file; returns (value with objects as _Pairs, its text, label)."""
  label = os.fspath(path)
  data = pathlib.Path(label).read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    got = data.split(b"\n")[line - 1]
    raise DataFormatError(label, line, f"not valid UTF-8 ({e.reason})", _display(got)) from e
  if not text.strip():
    raise DataFormatError(label, 1, "file is empty", text.split("\n", 1)[0])
  try:
    value = json.loads(text, object_pairs_hook=_Pairs)
  except json.JSONDecodeError as e:
    got = text.split("\n")[e.lineno - 1]
    what = f"invalid JSON: {e.msg} at column {e.colno}"
    raise DataFormatError(label, e.lineno, what, got[max(0, e.colno - 40) :]) from e
  return value, text, label


def _first_line(text: str) -> int:
  """1-based line of the first non-blank character of a text."""
  return text.count("\n", 0, len(text) - len(text.lstrip())) + 1


def _key_line(text: str, key: str, occurrence: int = 1) -> tuple[int | None, str | None]:
  """(1-based line, text from the key to the line's end) of the `occurrence`-th `"key":` in a
  JSON text; (None, None) if it is not found as written (e.g. with escapes)."""
  pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
  for k, match in enumerate(pattern.finditer(text), start=1):
    if k == occurrence:
      end = text.find("\n", match.start())
      got = text[match.start() : None if end < 0 else end]
      return text.count("\n", 0, match.start()) + 1, got
  return None, None


def _id_key(key: str) -> int | None:
  """A JSON key that names an id: a positive integer in plain decimal, else None."""
  if key.isascii() and key.isdigit() and key[0] != "0" and len(key) <= _MAX_DIGITS:
    return int(key)
  return None


def read_item_attributes_file(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads `{"item_id": [attribute_id, ...], ...}` into (items [K], offsets [K + 1], values [V]).

  Entries stay in file order. Item and attribute ids must be integers >= 1, no item may appear
  twice; an empty list (no attributes) is fine.
  """
  value, text, label = _load_json(path)
  if not isinstance(value, _Pairs):
    what = "expected a JSON object mapping item ids to lists of attribute ids"
    raise DataFormatError(label, _first_line(text), what, text.lstrip()[:80])

  def fail(key: str, what: str, occurrence: int = 1) -> NoReturn:
    line, got = _key_line(text, key, occurrence)
    raise DataFormatError(label, line, what, got)

  seen: set[int] = set()
  for key, attrs in value:
    item = _id_key(key)
    if item is None:
      fail(key, f"item id {key!r} is not a positive integer")
    if item in seen:
      fail(key, f"item {item} is listed twice", occurrence=2)
    seen.add(item)
    if type(attrs) is not list or any(type(a) is not int or not 0 < a <= _MAX_INT32 for a in attrs):
      found = json.dumps(_plain(attrs))[:60]
      fail(key, f"the attributes of item {item} must be a list of integer ids >= 1, found {found}")
  items = np.fromiter((int(key) for key, _ in value), np.int64, len(value))
  sizes = np.fromiter((len(attrs) for _, attrs in value), np.int64, len(value))
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  values = np.fromiter(itertools.chain.from_iterable(a for _, a in value), np.int64, offsets[-1])
  return items, offsets, values


def _plain(value: object) -> object:
  """A parsed JSON value with _Pairs turned back into dicts (for error messages)."""
  if isinstance(value, _Pairs):
    return {k: _plain(v) for k, v in value}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def _padded_attributes(
    items: np.ndarray, offsets: np.ndarray, values: np.ndarray, num_items: int
) -> np.ndarray:
  """[num_items + 1, max attributes] int32 table, row = item id, 0-padded."""
  sizes = np.diff(offsets)
  table = np.zeros((num_items + 1, int(sizes.max(initial=0))), np.int32)
  rows = np.repeat(items, sizes)
  cols = np.arange(len(values)) - np.repeat(offsets[:-1], sizes)
  table[rows, cols] = values
  return table


# ----------------------------------------------------------------------------------------------
# P5 datamaps
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Datamaps:
  """The parts of a P5 datamaps.json that we use; each is None when the file lacks it."""

  id2item: dict[int, str] | None  # item id -> ASIN
  id2user: dict[int, str] | None  # user id -> reviewer id
  id2attribute: dict[int, str] | None  # attribute id -> name
  attributeid2num: dict[int, int] | None  # attribute id -> number of items with it
  source: str


def read_datamaps_file(path: PathLike) -> Datamaps:
  """Reads P5's datamaps.json (id2item, id2user, id2attribute, attributeid2num; all optional)."""
  value, text, label = _load_json(path)
  if not isinstance(value, _Pairs):
    raise DataFormatError(label, _first_line(text), "expected a JSON object", text.lstrip()[:80])
  sections = dict(value)
  kinds = {"id2item": str, "id2user": str, "id2attribute": str, "attributeid2num": int}
  out = {}
  for section, kind in kinds.items():
    entries = sections.get(section)
    if entries is None:
      out[section] = None
      continue
    line, _ = _key_line(text, section)
    if not isinstance(entries, _Pairs):
      raise DataFormatError(label, line, f"{section!r} must be an object")
    mapping = {}
    for key, v in entries:
      k = _id_key(key)
      if k is None or type(v) is not kind or k in mapping:
        what = (f"{section!r}: every key must be a distinct positive integer id and every value "
                f"a {kind.__name__}; found {key!r}: {json.dumps(_plain(v))[:40]}")  # fmt: skip
        raise DataFormatError(label, line, what)
      mapping[k] = v
    out[section] = mapping
  return Datamaps(**out, source=label)


def _check_datamaps(
    maps: Datamaps, users: np.ndarray, num_items: int, sources: list[str]
) -> tuple[str, ...] | None:
  """Checks that the datamaps describe these users and items; returns the ASIN of each item."""
  data = " and ".join(os.path.basename(s) for s in sources[:-1])
  if maps.id2user is not None and set(maps.id2user) != set(users.tolist()):
    what = (f"id2user has {len(maps.id2user)} users but {data} has {len(users)} different "
            f"ones; is this the datamaps file of another dataset?")  # fmt: skip
    raise DataFormatError(maps.source, None, what)
  if maps.id2item is None:
    return None
  if set(maps.id2item) != set(range(1, num_items + 1)):
    what = (f"id2item has {len(maps.id2item)} items with ids {min(maps.id2item, default=0)}.."
            f"{max(maps.id2item, default=0)}, but {data} has items 1..{num_items}; is this the "
            f"datamaps file of another dataset?")  # fmt: skip
    raise DataFormatError(maps.source, None, what)
  return ("",) + tuple(maps.id2item[i] for i in range(1, num_items + 1))


def _attribute_names(
    maps: Datamaps, attributes: np.ndarray | None
) -> tuple[tuple[str, ...] | None, str | None]:
  """(names by attribute id, None) if the datamaps verifiably name the attribute file's ids,
  else (None, the reason)."""
  if maps.id2attribute is None:
    return None, "the datamaps have no id2attribute"
  if attributes is None:
    return None, "there is no attribute file to name"
  used = np.unique(attributes[attributes > 0])
  unnamed = np.setdiff1d(used, np.fromiter(maps.id2attribute, np.int64))
  if len(unnamed):
    return None, f"{len(unnamed)} attribute ids have no name in id2attribute, e.g. {unnamed[:5]}"
  if maps.attributeid2num is None:
    return None, "the datamaps have no attributeid2num to check the names against"
  # Items per attribute id in the file (an attribute listed twice for an item counts once).
  width = int(used.max(initial=0)) + 1
  rows = np.broadcast_to(np.arange(len(attributes))[:, None], attributes.shape)
  pairs = np.unique(rows[attributes > 0] * width + attributes[attributes > 0])
  counts = np.bincount(pairs % width, minlength=width)
  ids = np.fromiter(maps.attributeid2num, np.int64, len(maps.attributeid2num))
  expected = np.fromiter(maps.attributeid2num.values(), np.int64, len(ids))
  got = np.where(ids < width, counts[np.minimum(ids, width - 1)], 0)
  differ = int(np.sum(got != expected)) + int(np.sum(~np.isin(used, ids)))
  if differ:
    return None, (
        f"the datamaps' attributeid2num disagrees with the attribute file's item counts for "
        f"{differ} of {len(maps.attributeid2num)} ids: the datamaps number attributes "
        f"differently, so their names would be wrong"
    )
  size = max(maps.id2attribute) + 1
  return ("",) + tuple(maps.id2attribute.get(a, "") for a in range(1, size)), None
