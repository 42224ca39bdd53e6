"""Tests for genrec_jax.data.movielens: real ML-1M / ML-100K, zips, bad input, download."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import re
import zipfile

import numpy as np
import pytest

from genrec_jax.data import movielens as ml
from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError, DownloadError


def _write(path: pathlib.Path, data: bytes | str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
  return path


def _zip(path: pathlib.Path, members: dict[str, bytes | str], **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w", **kwargs) as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return path


def _assert_format_error(info: pytest.ExceptionInfo, path, line: int | None) -> None:
  error = info.value
  assert type(error) is DataFormatError
  assert error.path == os.fspath(path)
  assert error.line == line
  assert os.fspath(path) in str(error)
  if line is not None:
    assert f"{os.fspath(path)}:{line}: " in str(error)


TINY_RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
TINY_MOVIES_DAT = "1::Toy Story (1995)::Animation|Children's|Comedy\n661::James (1996)::Animation\n"


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml1m(data_dir) -> ml.Ratings:
  return ml.load_ratings(data_dir, "ml-1m")


@pytest.fixture(scope="module")
def ml100k(data_dir) -> ml.Ratings:
  return ml.load_ratings(data_dir, "ml-100k")


def test_ml1m_ratings_match_source_md(ml1m, data_dir):
  assert len(ml1m) == len(ml1m.user) == 1_000_209
  assert ml1m.user.dtype == np.int64 and ml1m.item.dtype == np.int64
  assert ml1m.rating.dtype == np.float32 and ml1m.timestamp.dtype == np.int64
  assert len(np.unique(ml1m.user)) == 6_040
  assert len(np.unique(ml1m.item)) == 3_706
  assert ml1m.item.max() == 3_952
  hist = np.bincount(ml1m.rating.astype(np.int64), minlength=6)[1:]
  assert hist.tolist() == [56_174, 107_557, 261_197, 348_971, 226_310]
  assert (ml1m.user[0], ml1m.item[0], ml1m.rating[0], ml1m.timestamp[0]) == (1, 1193, 5, 978300760)
  assert ml1m.source == os.fspath(data_dir.absolute() / "ml-1m" / "ratings.dat")


def test_ml1m_keeps_file_order(ml1m, data_dir):
  lines = (data_dir / "ml-1m" / "ratings.dat").read_text().splitlines()
  for i in (0, 1, 2, 123_457, 500_000, len(lines) - 1):
    user, item, rating, timestamp = map(int, lines[i].split("::"))
    assert (ml1m.user[i], ml1m.item[i], ml1m.rating[i], ml1m.timestamp[i]) == (
        user, item, rating, timestamp
    )
  assert not np.all(np.diff(ml1m.timestamp) >= 0)  # file order, not sorted by time


def test_ml1m_movies(data_dir):
  movies = ml.load_movies(data_dir, "ml-1m")
  assert len(movies.item) == len(movies.title) == len(movies.genres) == 3_883
  assert movies.item.dtype == np.int64 and movies.item.max() == 3_952
  assert (movies.item[0], movies.title[0]) == (1, "Toy Story (1995)")
  assert movies.genres[0] == ["Animation", "Children's", "Comedy"]
  assert "Misérables, Les (1995)" in movies.title  # latin-1 decoded


def test_ml100k_ratings_match_source_md(ml100k, data_dir):
  assert len(ml100k) == 100_000
  assert ml100k.rating.dtype == np.float32 and ml100k.user.dtype == np.int64
  assert len(np.unique(ml100k.user)) == 943
  assert len(np.unique(ml100k.item)) == 1_682
  hist = np.bincount(ml100k.rating.astype(np.int64), minlength=6)[1:]
  assert hist.tolist() == [6_110, 11_370, 27_145, 34_174, 21_201]
  assert (ml100k.user[0], ml100k.item[0], ml100k.rating[0], ml100k.timestamp[0]) == (
      196, 242, 3, 881250949
  )
  assert (ml100k.timestamp.min(), ml100k.timestamp.max()) == (874724710, 893286638)
  last = (data_dir / "ml-100k" / "u.data").read_text().splitlines()[-1]
  assert [ml100k.user[-1], ml100k.item[-1], ml100k.rating[-1], ml100k.timestamp[-1]] == [
      int(v) for v in last.split("\t")
  ]


def test_ml100k_movies(data_dir):
  movies = ml.load_movies(data_dir, "ml-100k")
  assert len(movies.item) == 1_682
  assert (movies.item[0], movies.title[0]) == (1, "Toy Story (1995)")
  assert movies.genres[0] == ["Animation", "Children's", "Comedy"]
  assert movies.genres[1] == ["Action", "Adventure", "Thriller"]  # GoldenEye


def test_ml100k_from_official_zip(tmp_path, data_dir, ml100k):
  real = data_dir / "ml-100k"
  members = {f"ml-100k/{f}": (real / f).read_bytes() for f in ("u.data", "u.item", "u.genre")}
  archive = _zip(tmp_path / "ml-100k.zip", members, compression=zipfile.ZIP_DEFLATED)
  assert ml.resolve_dataset_dir(tmp_path, "ml-100k") == archive
  ratings = ml.load_ratings(tmp_path, "ml-100k")
  assert ratings.source == f"{archive}:ml-100k/u.data"
  for field in ("user", "item", "rating", "timestamp"):
    np.testing.assert_array_equal(getattr(ratings, field), getattr(ml100k, field))
  movies = ml.load_movies(tmp_path, "ml-100k")
  assert movies.genres == ml.load_movies(data_dir, "ml-100k").genres


def test_ml100k_zip_without_u_genre_uses_standard_names(tmp_path, data_dir):
  real = data_dir / "ml-100k"
  members = {f"ml-100k/{f}": (real / f).read_bytes() for f in ("u.data", "u.item")}
  _zip(tmp_path / "ml-100k" / "ml-100k.zip", members)  # the DATA_DIR/<name>/<name>.zip spot
  movies = ml.load_movies(tmp_path, "ml-100k")
  assert movies.genres == ml.load_movies(data_dir, "ml-100k").genres


# --------------------------------------------------------------------------------------------
# Hand-made files and zips
# --------------------------------------------------------------------------------------------


def test_ml1m_from_official_layout_zip(tmp_path):
  archive = _zip(
      tmp_path / "ml-1m.zip",
      {"ml-1m/ratings.dat": TINY_RATINGS_DAT, "ml-1m/movies.dat": TINY_MOVIES_DAT},
  )
  ratings = ml.load_ratings(tmp_path, "ml-1m")
  assert ratings.source == f"{archive}:ml-1m/ratings.dat"
  assert ratings.user.tolist() == [1, 1, 2]
  assert ratings.item.tolist() == [1193, 661, 1193]
  assert ratings.rating.tolist() == [5, 3, 4]
  assert ratings.timestamp.tolist() == [978300760, 978302109, 978298413]
  # The source string reads back the same member.
  again = ml.read_ratings_file(ratings.source, "dat")
  np.testing.assert_array_equal(again.timestamp, ratings.timestamp)
  movies = ml.load_movies(tmp_path, "ml-1m")
  assert movies.item.tolist() == [1, 661] and movies.genres[1] == ["Animation"]


def test_plain_folder_wins_over_zip(tmp_path):
  _write(tmp_path / "ml-1m" / "ratings.dat", "7::8::1::9\n")
  _write(tmp_path / "ml-1m" / "movies.dat", TINY_MOVIES_DAT)
  _zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": TINY_RATINGS_DAT})
  assert ml.resolve_dataset_dir(tmp_path, "ml-1m") == tmp_path.absolute() / "ml-1m"
  assert ml.load_ratings(tmp_path, "ml-1m").user.tolist() == [7]


def test_ml10m_zip_half_stars_and_utf8(tmp_path):
  _zip(
      tmp_path / "ml-10m.zip",
      {
          "ml-10M100K/ratings.dat": "1::122::5::838985046\n1::185::4.5::838983525\n2::3::0.5::1",
          "ml-10M100K/movies.dat": "4::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::"
          "Comedy|Romance\n",
      },
  )
  ratings = ml.load_ratings(tmp_path, "ml-10m")  # no trailing newline is fine too
  assert ratings.rating.tolist() == [5.0, 4.5, 0.5]
  assert ratings.timestamp.tolist() == [838985046, 838983525, 1]
  movies = ml.load_movies(tmp_path, "ml-10m")
  assert movies.title == ["Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"]


def test_dat_movies_latin1_fallback(tmp_path):
  line = "73::Misérables, Les (1995)::Drama|War\n"
  path = _write(tmp_path / "movies.dat", line.encode("latin-1"))
  assert ml.read_movies_file(path, "dat").title == ["Misérables, Les (1995)"]


def test_ml20m_csv_with_quoted_titles(tmp_path):
  _write(
      tmp_path / "ml-20m" / "ratings.csv",
      "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,11,.5,974820\n",
  )
  _write(
      tmp_path / "ml-20m" / "movies.csv",
      "movieId,title,genres\n"
      "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
      '11,"American President, The (1995)",Comedy|Drama|Romance\n'
      '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Drama|Mystery\n'
      '131262,"Innocence, ""Again"" (2014)",(no genres listed)\n',
  )
  ratings = ml.load_ratings(tmp_path, "ml-20m")
  assert ratings.user.tolist() == [1, 1, 2]
  assert ratings.item.tolist() == [2, 29, 11]
  assert ratings.rating.tolist() == [3.5, 3.5, 0.5]
  assert ratings.timestamp.tolist() == [1112486027, 1112484676, 974820]
  movies = ml.load_movies(tmp_path, "ml-20m")
  assert movies.item.tolist() == [1, 11, 29, 131262]
  assert movies.title[1] == "American President, The (1995)"
  assert movies.title[2] == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
  assert movies.title[3] == 'Innocence, "Again" (2014)'
  assert movies.genres[1] == ["Comedy", "Drama", "Romance"]
  assert movies.genres[3] == []


def test_many_chunks_parse_like_one(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  rows = np.stack(
      [rng.integers(1, 10**6, 500), rng.integers(1, 10**5, 500), rng.integers(1, 11, 500),
       rng.integers(0, 2 * 10**9, 500)], axis=1,
  )  # fmt: skip
  text = "".join(f"{u}::{i}::{r / 2:g}::{t}\n" for u, i, r, t in rows)  # 4, 4.5, 0.5
  path = _write(tmp_path / "ratings.dat", text)
  monkeypatch.setattr(ml, "_CHUNK_BYTES", 100)
  ratings = ml.read_ratings_file(path, "dat")
  np.testing.assert_array_equal(ratings.user, rows[:, 0])
  np.testing.assert_array_equal(ratings.item, rows[:, 1])
  np.testing.assert_array_equal(ratings.rating, rows[:, 2] / 2)
  np.testing.assert_array_equal(ratings.timestamp, rows[:, 3])
  # A bad line deep in a later chunk is reported with its true line number.
  lines = text.splitlines(keepends=True)
  lines[377] = "1::2::3\n"
  _write(path, "".join(lines))
  with pytest.raises(DataFormatError) as info:
    ml.read_ratings_file(path, "dat")
  _assert_format_error(info, path, 378)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

BAD_RATINGS = [
    # (name, content, fmt, line, words in the message)
    ("too_few_fields", "1::2::3::4\n1::2::3\n", "dat", 2, "expected 4 fields separated by '::'"),
    ("too_many_fields", "1::2::3::4::5\n", "dat", 1, "expected 4 fields separated by '::'"),
    ("csv_given_as_dat", "userId,movieId,rating,timestamp\n1,2,3,4\n", "dat", 1,
     "expected 4 fields separated by '::'"),
    ("udata_given_as_dat", "196\t242\t3\t881250949\n", "dat", 1,
     "expected 4 fields separated by '::'"),
    ("dat_given_as_udata", "1::2::3::4\n", "udata", 1, "expected 4 fields separated by '\\t'"),
    ("users_dat", "1::F::1::10::48067\n", "dat", 1, "expected 4 fields"),
    ("single_colons", "1::2::3::4\n1:2:3:4\n", "dat", 2, "expected 4 fields"),
    ("non_numeric_item", "1::2::3::4\n1::abc::3::4\n", "dat", 2, "movie id"),
    ("non_numeric_rating", "1::2::five::4\n", "dat", 1, "rating"),
    ("fractional_user", "1.5::2::3::4\n", "dat", 1, "user id"),
    ("negative_timestamp", "1::2::3::-4\n", "dat", 1, "timestamp"),
    ("two_dots", "1::2::3.5.1::4\n", "dat", 1, "rating"),
    ("lone_dot", "1::2::.::4\n", "dat", 1, "rating"),
    ("empty_field", "1::2::::4\n", "dat", 1, "rating"),
    ("huge_number", "1::2::3::12345678901234567890\n", "dat", 1, "timestamp"),
    ("empty_file", "", "dat", 1, "file is empty"),
    ("whitespace_file", "\n\n", "udata", 1, "file is empty"),
    ("blank_line_in_middle", "1::2::3::4\n\n1::2::3::4\n", "dat", 2, "blank line"),
    ("two_trailing_newlines", "1::2::3::4\n\n", "dat", 2, "blank line"),
    ("trailing_space", "1\t2\t3\t4 \n", "udata", 1, "timestamp"),
    ("csv_missing_header", "1,2,3.5,1112486027\n", "csv", 1, "expected the header"),
    ("dat_given_as_csv", "1::2::3::4\n", "csv", 1, "expected the header"),
    ("csv_header_only", "userId,movieId,rating,timestamp\n", "csv", 2, "no ratings"),
    ("csv_bad_row", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3\n", "csv", 3,
     "expected 4 fields separated by ','"),
]  # fmt: skip


@pytest.mark.parametrize(
    "content,fmt,line,words", [case[1:] for case in BAD_RATINGS], ids=[c[0] for c in BAD_RATINGS]
)
def test_bad_ratings_file(tmp_path, content, fmt, line, words):
  path = _write(tmp_path / f"ratings.{fmt}", content)
  with pytest.raises(DataFormatError) as info:
    ml.read_ratings_file(path, fmt)
  _assert_format_error(info, path, line)
  assert words in str(info.value)
  assert isinstance(info.value, ValueError)


def test_error_quotes_the_line_truncated(tmp_path):
  long_line = "1::2::3::4::" + "x" * 200
  path = _write(tmp_path / "ratings.dat", long_line + "\n")
  with pytest.raises(DataFormatError) as info:
    ml.read_ratings_file(path, "dat")
  assert str(info.value).endswith(f"; got {long_line[:80]!r}")
  assert info.value.got == long_line
  again = pickle.loads(pickle.dumps(info.value))
  assert (again.path, again.line, str(again)) == (info.value.path, 1, str(info.value))


def test_bad_line_inside_zip_names_the_member(tmp_path):
  archive = _zip(
      tmp_path / "ml-1m.zip",
      {"ml-1m/ratings.dat": "1::2::3::4\n1::2::3::x\n", "ml-1m/movies.dat": TINY_MOVIES_DAT},
  )
  with pytest.raises(DataFormatError) as info:
    ml.load_ratings(tmp_path, "ml-1m")
  _assert_format_error(info, f"{archive}:ml-1m/ratings.dat", 2)


BAD_MOVIES = [
    ("dat_missing_genres", "1::Toy Story (1995)::Comedy\n2::Jumanji (1995)\n", "dat", 2,
     "expected 3 fields separated by '::'"),
    ("dat_bad_id", "one::Toy Story (1995)::Comedy\n", "dat", 1, "movie id"),
    ("dat_blank_line", "1::A (1995)::Comedy\n\n2::B (1995)::Drama\n", "dat", 2, "blank line"),
    ("dat_empty", "", "dat", 1, "file is empty"),
    ("csv_given_dat", "1::Toy Story (1995)::Comedy\n", "csv", 1, "expected the header"),
    ("csv_unquoted_comma", "movieId,title,genres\n11,American President, The (1995),Comedy\n",
     "csv", 2, "expected 3 comma-separated fields"),
    ("csv_blank_line", "movieId,title,genres\n1,A,Comedy\n\n2,B,Drama\n", "csv", 3, "blank line"),
    ("csv_header_only", "movieId,title,genres\n", "csv", 2, "no movies"),
    ("uitem_short", "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n", "uitem", 1,
     "expected 24 fields separated by '|'"),
    ("uitem_bad_flag", "1|T (1995)|d||u" + "|0" * 18 + "|2\n", "uitem", 1, "genre flags"),
]  # fmt: skip


@pytest.mark.parametrize(
    "content,fmt,line,words", [case[1:] for case in BAD_MOVIES], ids=[c[0] for c in BAD_MOVIES]
)
def test_bad_movies_file(tmp_path, content, fmt, line, words):
  path = _write(tmp_path / f"movies.{fmt}", content)
  with pytest.raises(DataFormatError) as info:
    ml.read_movies_file(path, fmt)
  _assert_format_error(info, path, line)
  assert words in str(info.value)


def test_truncated_zip(tmp_path):
  archive = _zip(
      tmp_path / "ml-1m.zip",
      {"ml-1m/ratings.dat": TINY_RATINGS_DAT * 50, "ml-1m/movies.dat": TINY_MOVIES_DAT},
      compression=zipfile.ZIP_DEFLATED,
  )
  data = archive.read_bytes()
  archive.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataFormatError) as info:
    ml.load_ratings(tmp_path, "ml-1m")
  _assert_format_error(info, archive, None)
  assert "truncated or corrupt" in str(info.value) and "re-download" in str(info.value)


def test_zip_with_bad_crc(tmp_path):
  archive = _zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": TINY_RATINGS_DAT})
  data = archive.read_bytes()
  at = data.index(b"978300760")
  archive.write_bytes(data[:at] + b"978300761" + data[at + 9 :])  # stored member, same length
  with pytest.raises(DataFormatError) as info:
    ml.read_ratings_file(f"{archive}:ml-1m/ratings.dat", "dat")
  _assert_format_error(info, archive, None)
  assert "truncated or corrupt" in str(info.value)


def test_zip_missing_member(tmp_path):
  archive = _zip(tmp_path / "ml-1m.zip", {"ml-1m/README": "hi"})
  with pytest.raises(DataFormatError) as info:
    ml.load_ratings(tmp_path, "ml-1m")
  _assert_format_error(info, archive, None)
  assert "ml-1m/ratings.dat" in str(info.value)


# --------------------------------------------------------------------------------------------
# Missing data and names
# --------------------------------------------------------------------------------------------


def test_missing_dataset_says_what_to_put_where(tmp_path):
  with pytest.raises(DatasetNotFoundError) as info:
    ml.load_ratings(tmp_path, "ml-1m")
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert f"ratings.dat and movies.dat in {tmp_path / 'ml-1m'}{os.sep}" in message
  assert str(tmp_path / "ml-1m.zip") in message
  assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message
  for hint in ("--download", "--data_dir", "GENREC_DATA_DIR"):
    assert hint in message


def test_missing_movies_file_is_not_found(tmp_path):
  _write(tmp_path / "ml-100k" / "u.data", "1\t2\t3\t4\n")
  with pytest.raises(DatasetNotFoundError, match="u.data and u.item"):
    ml.load_movies(tmp_path, "ml-100k")


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m"):
    ml.load_ratings(tmp_path, "ml-2m")
  with pytest.raises(ValueError, match="format"):
    ml.read_ratings_file(tmp_path / "x", "tsv")


# --------------------------------------------------------------------------------------------
# Download (no network: a fake opener serves local bytes)
# --------------------------------------------------------------------------------------------


class _FakeResponse(io.BytesIO):

  def __init__(self, data: bytes):
    super().__init__(data)
    self.headers = {"Content-Length": str(len(data))}


def _fake_opener(data: bytes, calls: list[str]):
  def urlopen(url):
    calls.append(url)
    return _FakeResponse(data)

  return urlopen


@pytest.fixture
def zip_bytes(tmp_path) -> bytes:
  members = {"ml-1m/ratings.dat": TINY_RATINGS_DAT, "ml-1m/movies.dat": TINY_MOVIES_DAT}
  return _zip(tmp_path / "source" / "ml-1m.zip", members).read_bytes()


def _checksums(data: bytes) -> dict[str, ml.Checksum]:
  return {"ml-1m": ml.Checksum(len(data), "sha256", hashlib.sha256(data).hexdigest())}


def test_download_writes_verified_zip(tmp_path, zip_bytes):
  data_dir, calls = tmp_path / "data", []
  path = ml.download_zip(
      data_dir, "ml-1m", checksums=_checksums(zip_bytes), urlopen=_fake_opener(zip_bytes, calls),
      chunk_bytes=64,
  )  # fmt: skip
  assert calls == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
  assert path == data_dir.absolute() / "ml-1m.zip" and path.read_bytes() == zip_bytes
  assert sorted(p.name for p in data_dir.iterdir()) == ["ml-1m.zip"]  # no partial file left
  assert ml.load_ratings(data_dir, "ml-1m").user.tolist() == [1, 1, 2]


@pytest.mark.parametrize("corrupt", ["digest", "size"])
def test_download_checksum_mismatch_leaves_nothing(tmp_path, zip_bytes, corrupt):
  data_dir, calls = tmp_path / "data", []
  expected = _checksums(zip_bytes)["ml-1m"]
  if corrupt == "digest":
    expected = ml.Checksum(expected.size, "sha256", "0" * 64)
  else:
    expected = ml.Checksum(expected.size + 1, "sha256", expected.hexdigest)
  with pytest.raises(DownloadError, match="failed verification"):
    ml.download_zip(
        data_dir, "ml-1m", checksums={"ml-1m": expected}, urlopen=_fake_opener(zip_bytes, calls)
    )
  assert calls and list(data_dir.iterdir()) == []


def test_download_refuses_without_known_checksum(tmp_path, zip_bytes):
  calls = []
  with pytest.raises(DownloadError, match="No verified checksum"):
    ml.download_zip(tmp_path, "ml-32m", urlopen=_fake_opener(zip_bytes, calls))
  assert calls == [] and not (tmp_path / "ml-32m.zip").exists()


def test_download_network_error_is_clear(tmp_path):
  def offline(url):
    raise ml.urllib.error.URLError("no route to host")

  with pytest.raises(DownloadError, match="needs internet"):
    ml.download_zip(tmp_path, "ml-1m", urlopen=offline)
  assert list(tmp_path.iterdir()) == []


def test_load_with_download_flag(tmp_path, zip_bytes, monkeypatch):
  calls = []
  monkeypatch.setattr(ml, "CHECKSUMS", _checksums(zip_bytes))
  monkeypatch.setattr(ml, "_open_url", _fake_opener(zip_bytes, calls))
  with pytest.raises(DatasetNotFoundError):
    ml.load_ratings(tmp_path, "ml-1m")  # download is never implicit
  assert calls == []
  ratings = ml.load_ratings(tmp_path, "ml-1m", download=True)
  assert len(calls) == 1 and ratings.item.tolist() == [1193, 661, 1193]
  assert ml.load_movies(tmp_path, "ml-1m", download=True).title[0] == "Toy Story (1995)"
  assert len(calls) == 1  # the zip is now on disk


def test_checksum_table_covers_only_sourced_datasets():
  assert set(ml.CHECKSUMS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m"}
  for checksum in ml.CHECKSUMS.values():
    assert len(checksum.hexdigest) == hashlib.new(checksum.algorithm).digest_size * 2


def _reference_parse(text: str) -> list[tuple[float, ...]] | int:
  """Slow, obviously-correct 'dat' parser: the rows, or the 1-based number of the first bad line."""
  text = text.replace("\r\n", "\n")
  if not text.strip():
    return 1
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()
  rows = []
  for number, line in enumerate(lines, start=1):
    fields = line.split("::")
    ok = len(fields) == 4 and all(
        0 < len(f) <= 15
        and re.fullmatch(r"\d+\.?\d*|\.\d+" if k == 2 else r"\d+", f, re.ASCII) is not None
        for k, f in enumerate(fields)
    )
    if not ok:
      return number
    rows.append(tuple(float(f) for f in fields))
  return rows


def test_fast_path_agrees_with_a_reference_parser_on_mutated_files(tmp_path, monkeypatch):
  monkeypatch.setattr(ml, "_CHUNK_BYTES", 40)  # several chunks per file
  rng = np.random.default_rng(1)
  base = "1::1193::5::978300760\n22::661::3.5::978302109\n333::914::.5::9\n4::3408::4.::978300275\n"
  alphabet = [":", "::", ".", "\t", ",", " ", "a", "-", "\n", "\r\n", "7", "", "e"]
  path = tmp_path / "ratings.dat"
  outcomes = set()
  for _ in range(400):
    chars = list(base)
    for _ in range(rng.integers(0, 3)):
      at = rng.integers(0, len(chars) + 1)
      if rng.random() < 0.5 and at < len(chars):
        chars[at] = alphabet[rng.integers(len(alphabet))]
      else:
        chars.insert(at, alphabet[rng.integers(len(alphabet))])
    text = "".join(chars)
    _write(path, text)
    expected = _reference_parse(text)
    if isinstance(expected, int):
      with pytest.raises(DataFormatError) as info:
        ml.read_ratings_file(path, "dat")
      assert info.value.line == expected, text
      outcomes.add("error")
    else:
      ratings = ml.read_ratings_file(path, "dat")
      got = np.stack([ratings.user, ratings.item, ratings.rating, ratings.timestamp], axis=1)
      np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-6, err_msg=text)
      outcomes.add("ok")
  assert outcomes == {"ok", "error"}


def test_catalog_metadata_or_rated_movies(data_dir):
  """data.catalog: every movie of movies.dat (default) or only the rated ones (RecBole's set)."""
  import ml_collections

  from genrec_jax.config import ConfigError
  from genrec_jax.data.registry import load_task
  from genrec_jax.train import towers

  cfg = ml_collections.ConfigDict(dict(
      seed=0, data=dict(dataset="ml-1m", protocol="loo", max_seq_len=1, download=False,
                        history_filter="all", cold_start_frac=0.0, catalog="metadata"),
      model=dict(name="mf_bpr")))
  ratings = ml.load_ratings(data_dir, "ml-1m")
  movies = ml.load_movies(data_dir, "ml-1m")
  full = load_task(cfg, str(data_dir))
  np.testing.assert_array_equal(full.catalog, np.unique(movies.item))  # 3,883 movies
  cfg.data.catalog = "rated"
  rated = load_task(cfg, str(data_dir))
  np.testing.assert_array_equal(rated.catalog, np.unique(ratings.item))
  assert (len(full.catalog), len(rated.catalog)) == (3883, 3706)
  # the split itself does not depend on the candidate set
  np.testing.assert_array_equal(full.split.test.targets_UxN, rated.split.test.targets_UxN)
  cfg.data.catalog = "all"
  with pytest.raises(ConfigError, match="data.catalog"):
    load_task(cfg, str(data_dir))
  cfg.data.dataset, cfg.data.catalog = "amazon-beauty", "rated"
  with pytest.raises(ConfigError, match="is for MovieLens"):
    load_task(cfg, str(data_dir))
  # the tower experiments pass it through
  tcfg = towers.tower_config()
  tcfg.model.name, tcfg.data.catalog = "mf_bpr", "rated"
  assert len(towers.load_tower_data(tcfg, str(data_dir)).catalog) == 3706


def _naive_k_core(user, item, k):
  """Drops users and items with < k events, recounting after every round, with Python dicts."""
  keep = list(range(len(user)))
  while True:
    uc, ic = {}, {}
    for j in keep:
      uc[user[j]] = uc.get(user[j], 0) + 1
      ic[item[j]] = ic.get(item[j], 0) + 1
    kept = [j for j in keep if uc[user[j]] >= k and ic[item[j]] >= k]
    if kept == keep:
      return kept
    keep = kept


def test_filter_ratings_matches_naive_k_core_and_recbole_counts(data_dir):
  """min_rating then repeated k-core, as RecBole filters; on real ML-1M the ratings left equal
  RecBole's published counts: 836,478 with ratings >= 3 (RecBole-GNN's ml-1m table), 834,449
  after the 10-core of its ml-1m sequential/general benchmark."""
  rng = np.random.default_rng(0)
  n = 400
  r = ml.Ratings(user=rng.integers(0, 40, n), item=rng.integers(0, 60, n),
                 rating=rng.integers(1, 6, n).astype(np.float32), timestamp=np.arange(n), source="synthetic")
  for min_rating, k in ((0.0, 0), (3.0, 0), (0.0, 8), (3.0, 6)):
    got = ml.filter_ratings(r, min_rating, k)
    pre = [j for j in range(n) if r.rating[j] >= min_rating]
    sub = _naive_k_core(r.user[pre], r.item[pre], k) if k else list(range(len(pre)))
    want = np.asarray(pre, np.int64)[sub] if sub else np.zeros(0, np.int64)
    np.testing.assert_array_equal(got.timestamp, r.timestamp[want])  # same rows, same order
    if k:
      assert np.bincount(np.unique(got.user, return_inverse=True)[1]).min(initial=k) >= k
  assert len(ml.filter_ratings(r, 0.0, 6)) < n  # the synthetic case really filters
  real = ml.load_ratings(data_dir, "ml-1m")
  assert len(ml.filter_ratings(real, 3.0, 0)) == 836478
  f = ml.filter_ratings(real, 3.0, 10)
  assert (len(f), len(np.unique(f.item))) == (834449, 3123)  # RecBole: 3,124 items with its padding id


def test_recbole_protocol_config(data_dir):
  """data.min_rating / min_interactions reach the split; history_filter='none' ranks every
  candidate (past items included); the filters are refused outside MovieLens."""
  import ml_collections

  from genrec_jax.config import ConfigError
  from genrec_jax.data import pipeline
  from genrec_jax.data.registry import load_task

  cfg = ml_collections.ConfigDict(dict(
      seed=0, data=dict(dataset="ml-1m", protocol="loo", max_seq_len=50, download=False,
                        history_filter="none", cold_start_frac=0.0, catalog="rated",
                        min_rating=3.0, min_interactions=10, train_windows="last"),
      model=dict(name="sasrec")))
  task = load_task(cfg, str(data_dir))
  assert len(task.catalog) == 3123 and len(task.split.test) == 6033
  f = ml.filter_ratings(ml.load_ratings(data_dir, "ml-1m"), 3.0, 10)
  per_user = np.unique(f.user, return_counts=True)[1]
  # training: each user's last 51 events before the val and test ones (50 supervised positions)
  assert int(task.split.train.length_U.sum()) == int(np.sum(np.minimum(per_user - 2, 51) - 1))
  batch, _ = pipeline.eval_batches(task.split.test, 16)[0]
  assert not batch["history"].any()  # nothing removed from the ranking
  # train_windows='all': every training event but each user's first is a target, as in RecBole's
  # prefix examples (Σ (length - 3) = 816,350)
  cfg.data.train_windows = "all"
  windows = load_task(cfg, str(data_dir)).split.train
  assert int(windows.length_U.sum()) == int(np.sum(per_user - 3)) == 816350
  assert windows.length_U.max() == 50 and len(windows) > len(task.split.train)
  # train_stride=10: the same 816,350 targets, each with at least 41 events of context (or all)
  cfg.data.train_stride = 10
  strided = load_task(cfg, str(data_dir)).split.train
  assert int((strided.targets_UxN != 0).sum()) == 816350
  assert int((strided.targets_UxN != 0).sum(1).max()) == 10 and len(strided) > 4 * len(windows)
  for bad in (51, -1):
    cfg.data.train_stride = bad
    with pytest.raises(ConfigError, match="train_stride"):
      load_task(cfg, str(data_dir))
  cfg.data.train_stride, cfg.data.train_windows = 10, "last"
  with pytest.raises(ConfigError, match="train_stride"):
    load_task(cfg, str(data_dir))
  cfg.data.train_stride, cfg.data.train_windows = 0, "all"
  cfg.data.dataset = "amazon-beauty"
  cfg.data.catalog = "metadata"
  with pytest.raises(ConfigError, match="min_rating"):
    load_task(cfg, str(data_dir))
