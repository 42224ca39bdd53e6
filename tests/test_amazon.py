"""Tests for genrec_jax.data.amazon: real Beauty / Sports files, tiny hand-made data, bad input."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from genrec_jax.data import amazon
from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError
from genrec_jax.data.sequences import make_split


def _write(path: pathlib.Path, data: bytes | str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
  return path


def _assert_format_error(info: pytest.ExceptionInfo, path, line: int | None) -> None:
  error = info.value
  assert type(error) is DataFormatError
  assert error.path == os.fspath(path)
  assert error.line == line
  where = os.fspath(path) if line is None else f"{os.fspath(path)}:{line}: "
  assert where in str(error)


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beauty(data_dir) -> amazon.SequenceData:
  return amazon.load(data_dir, "amazon-beauty")


@pytest.fixture(scope="module")
def sports(data_dir) -> amazon.SequenceData:
  return amazon.load(data_dir, "amazon-sports")


@pytest.mark.parametrize(
    "name,users,items,interactions,max_length",
    [("amazon-beauty", 22_363, 12_101, 198_502, 204),
     ("amazon-sports", 35_598, 18_357, 296_337, 296)],
)  # fmt: skip
def test_counts_match_source_md(request, name, users, items, interactions, max_length):
  data = request.getfixturevalue("beauty" if name == "amazon-beauty" else "sports")
  assert (data.num_users, data.num_items, data.num_interactions) == (users, items, interactions)
  assert data.users.tolist() == list(range(1, users + 1))  # one line per user, ids 1..U in order
  assert len(np.unique(data.items)) == items and data.items.min() == 1
  assert data.users.dtype == data.offsets.dtype == data.items.dtype == np.int64
  assert (data.lengths().min(), data.lengths().max()) == (5, max_length)  # 5-core
  assert data.attributes.shape[0] == items + 1 and not data.attributes[0].any()
  assert len(data.item_asins) == items + 1


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports"])
def test_sequences_are_the_file_lines(request, data_dir, name):
  data = request.getfixturevalue("beauty" if name == "amazon-beauty" else "sports")
  files = amazon.DATASETS[name]
  lines = (data_dir / files.directory / files.sequences).read_text().splitlines()
  for k in (0, 1, 1234, len(lines) - 1):
    user, *items = map(int, lines[k].split(" "))
    assert data.users[k] == user and data.sequence(k).tolist() == items
  assert data.sources[0] == os.fspath(data_dir.absolute() / files.directory / files.sequences)


def test_beauty_first_user_and_known_items(beauty, data_dir):
  assert beauty.sequence(0).tolist() == [1, 2, 3, 4, 5]  # line 1: "1 1 2 3 4 5"
  assert beauty.attributes[4].tolist() == [1, 2, 3, 0, 0, 0]  # "4": [1, 2, 3]
  assert beauty.attributes[1].tolist() == [173, 1, 162, 171, 0, 0]
  assert beauty.item_asins[1] == "B004756YJA"
  raw = json.loads((data_dir / "amazon-beauty" / "Beauty_item2attributes.json").read_text())
  for item, attrs in raw.items():
    row = beauty.attributes[int(item)]
    assert row[: len(attrs)].tolist() == attrs and not row[len(attrs) :].any()


def test_sports_known_items(sports):
  assert sports.sequence(0).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
  assert sports.attributes[1][:7].tolist() == [1, 2, 3, 4, 5, 6, 0]
  assert sports.attributes.max() == 2_277
  assert sports.item_asins[:3] == ("", "1881509818", "B0048KGFHU")


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports"])
def test_p5_attribute_names_do_not_index_the_s3rec_attributes(request, name):
  # Read through id2attribute, Beauty item 1 would get four brand names: the numberings differ.
  data = request.getfixturevalue("beauty" if name == "amazon-beauty" else "sports")
  assert data.attribute_names is None
  assert "attributeid2num disagrees" in data.attribute_names_problem


def test_beauty_loo_split_sizes(beauty):
  seqs = amazon.to_user_sequences(beauty)
  assert seqs.num_embeddings == 12_102 and seqs.catalog.tolist() == list(range(1, 12_102))
  n = 50
  split = make_split(seqs, "loo", n)
  lengths = beauty.lengths()  # users are 1..U in file order, so rows line up
  assert len(split.train) == len(split.val) == len(split.test) == 22_363
  np.testing.assert_array_equal(split.train.length_U, np.minimum(lengths - 3, n))
  np.testing.assert_array_equal(split.val.length_U, np.minimum(lengths - 2, n))
  np.testing.assert_array_equal(split.test.length_U, np.minimum(lengths - 1, n))
  last = beauty.items[beauty.offsets[1:] - 1]
  second_to_last = beauty.items[beauty.offsets[1:] - 2]
  rows = np.arange(len(lengths))
  np.testing.assert_array_equal(split.test.targets_UxN[rows, split.test.length_U - 1], last)
  np.testing.assert_array_equal(split.val.targets_UxN[rows, split.val.length_U - 1], second_to_last)
  assert (split.test.targets_UxN > 0).sum() == 22_363
  # Training never sees a user's last two items as targets: T - 3U supervised positions (capped).
  assert (split.train.targets_UxN > 0).sum() == np.minimum(lengths - 3, n).sum()


# --------------------------------------------------------------------------------------------
# Tiny hand-made dataset
# --------------------------------------------------------------------------------------------

TINY_TXT = "7 5 3 7 2\n2 4 5 6\n3 1 2 3 4 5 6\n"  # users out of order on purpose
TINY_ATTRS = '{"1": [1], "5": [2, 3], "8": []}'  # item 8 occurs only here
TINY_MAPS = {
    "id2user": {"7": "A7", "2": "A2", "3": "A3"},
    "id2item": {str(i): f"ASIN{i}" for i in range(1, 9)},
    "id2attribute": {"1": "Brand", "2": "Face", "3": "Makeup"},
    "attributeid2num": {"1": 1, "2": 1, "3": 1},
}


def _tiny(root: pathlib.Path, txt=TINY_TXT, attrs=TINY_ATTRS, maps=TINY_MAPS) -> pathlib.Path:
  folder = root / "amazon-beauty"
  _write(folder / "Beauty.txt", txt)
  if attrs is not None:
    _write(folder / "Beauty_item2attributes.json", attrs)
  if maps is not None:
    _write(folder / "p5_beauty_datamaps.json", json.dumps(maps))
  return folder


def test_tiny_dataset(tmp_path):
  folder = _tiny(tmp_path)
  data = amazon.load(tmp_path, "amazon-beauty")
  assert data.users.tolist() == [7, 2, 3]
  assert data.offsets.tolist() == [0, 4, 7, 13]
  assert data.items.tolist() == [5, 3, 7, 2, 4, 5, 6, 1, 2, 3, 4, 5, 6]
  assert data.num_items == 8
  assert data.attributes.tolist() == [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0], [2, 3], [0, 0],
                                      [0, 0], [0, 0]]  # fmt: skip
  assert data.attribute_names == ("", "Brand", "Face", "Makeup")
  assert data.attribute_names_problem is None
  assert data.item_asins == ("", *(f"ASIN{i}" for i in range(1, 9)))
  assert data.sources == tuple(
      os.fspath(folder.absolute() / f)
      for f in ("Beauty.txt", "Beauty_item2attributes.json", "p5_beauty_datamaps.json")
  )

  seqs = amazon.to_user_sequences(data)
  assert seqs.users.tolist() == [2, 3, 7]  # sorted by id; each sequence keeps file order
  assert seqs.items.tolist() == [4, 5, 6, 1, 2, 3, 4, 5, 6, 5, 3, 7, 2]
  assert seqs.timestamps.tolist() == [1, 2, 3, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
  assert seqs.catalog.tolist() == list(range(1, 9)) and seqs.num_embeddings == 9

  split = make_split(seqs, "loo", 3)
  # user 2: [4 5 6] -> train [4] (nothing to predict), val 4 -> 5, test 4 5 -> 6.
  # user 3: [1..6] -> train 1 2 3 -> 2 3 4, val 2 3 4 -> 5, test 3 4 5 -> 6.
  # user 7: [5 3 7 2] -> train 5 -> 3, val 5 3 -> 7, test 5 3 7 -> 2.
  assert split.train.ids_UxN.tolist() == [[0, 0, 0], [1, 2, 3], [5, 0, 0]]
  assert split.train.targets_UxN.tolist() == [[0, 0, 0], [2, 3, 4], [3, 0, 0]]
  assert split.train.length_U.tolist() == [0, 3, 1]
  assert split.train.ts_UxN1.tolist() == [[1, 0, 0, 0], [1, 2, 3, 4], [1, 2, 0, 0]]
  assert split.val.ids_UxN.tolist() == [[4, 0, 0], [2, 3, 4], [5, 3, 0]]
  assert split.val.targets_UxN.tolist() == [[5, 0, 0], [0, 0, 5], [0, 7, 0]]
  assert split.val.length_U.tolist() == [1, 3, 2]
  assert split.test.ids_UxN.tolist() == [[4, 5, 0], [3, 4, 5], [5, 3, 7]]
  assert split.test.targets_UxN.tolist() == [[0, 6, 0], [0, 0, 6], [0, 0, 2]]
  assert split.test.ts_UxN1.tolist() == [[1, 2, 3, 0], [3, 4, 5, 6], [1, 2, 3, 4]]
  assert split.test.user_U.tolist() == [2, 3, 7]


def test_optional_files_and_lenient_whitespace(tmp_path):
  _tiny(tmp_path, txt="7\t5 3  7 2 \r\n2 4 5 6", attrs=None, maps=None)  # tabs, CRLF, no final \n
  data = amazon.load(tmp_path, "amazon-beauty")
  assert data.users.tolist() == [7, 2] and data.items.tolist() == [5, 3, 7, 2, 4, 5, 6]
  assert data.num_items == 7
  assert data.attributes is None and data.item_asins is None and data.attribute_names is None
  assert len(data.sources) == 1


def test_datamaps_with_other_numbering_give_no_names(tmp_path):
  _tiny(tmp_path, maps={**TINY_MAPS, "attributeid2num": {"1": 1, "2": 5, "3": 1}})
  data = amazon.load(tmp_path, "amazon-beauty")
  assert data.attribute_names is None and "disagrees" in data.attribute_names_problem
  assert data.item_asins[8] == "ASIN8"  # the item map is still checked and used


@pytest.mark.parametrize(
    "maps,words",
    [({**TINY_MAPS, "id2item": {"1": "A"}}, "id2item has 1 items"),
     ({**TINY_MAPS, "id2user": {"1": "A1"}}, "id2user has 1 users"),
     ({**TINY_MAPS, "id2item": {"x": "A"}}, "'id2item': every key"),
     ({**TINY_MAPS, "attributeid2num": {"1": "one"}}, "'attributeid2num': every key")],
    ids=["items", "users", "bad_key", "bad_value"],
)  # fmt: skip
def test_datamaps_of_another_dataset(tmp_path, maps, words):
  folder = _tiny(tmp_path, maps=maps)
  with pytest.raises(DataFormatError, match=words) as info:
    amazon.load(tmp_path, "amazon-beauty")
  assert info.value.path == os.fspath(folder.absolute() / "p5_beauty_datamaps.json")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

BAD_SEQUENCES = [
    # (name, content, line, words in the message)
    ("non_integer_item", "1 2 3\n2 4 x\n", 2, "item 2 must be a positive integer, found 'x'"),
    ("decimal_item", "1 2.5 3\n", 1, "item 1 must be a positive integer, found '2.5'"),
    ("negative_item", "1 2\n2 -3\n", 2, "item 1 must be a positive integer, found '-3'"),
    ("non_integer_user", "u1 2 3\n", 1, "the user id must be a positive integer"),
    ("header_line", "user_id item_ids\n1 2\n", 1, "the user id must be a positive integer"),
    ("comma_separated", "1 2\n2,3,4\n", 2, "found '2,3,4'"),
    ("user_without_items", "1 2 3\n2\n3 4\n", 2, "user 2 has no items"),
    ("user_without_items_last", "1 2 3\n2 \n", 2, "user 2 has no items"),
    ("duplicate_user", "1 2 3\n2 4\n1 5\n", 3, "duplicate user id 1 (first on line 1)"),
    ("zero_item", "1 2 0\n", 1, "item 2 is 0; ids start from 1"),
    ("zero_user", "1 2\n00 2\n", 2, "the user id is 0"),
    ("huge_id", "1 1234567890123456789\n", 1, "longer than 18 digits"),
    ("empty_file", "", 1, "file is empty"),
    ("whitespace_file", "\n \n", 1, "file is empty"),
    ("blank_line_in_middle", "1 2\n\n2 3\n", 2, "blank line"),
    ("two_trailing_newlines", "1 2\n\n", 2, "blank line"),
    ("non_ascii", "1 2\n2 ３\n", 2, "item 1 must be a positive integer"),
    ("duplicate_before_bad_token", "1 2\n1 3\n2 x\n", 2, "duplicate user id 1"),
    ("bad_token_before_duplicate", "1 x\n1 3\n", 1, "item 1 must be a positive integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    "content,line,words", [c[1:] for c in BAD_SEQUENCES], ids=[c[0] for c in BAD_SEQUENCES]
)
def test_bad_sequences_file(tmp_path, content, line, words):
  path = _write(tmp_path / "Beauty.txt", content)
  with pytest.raises(DataFormatError) as info:
    amazon.read_sequences_file(path)
  _assert_format_error(info, path, line)
  assert words in str(info.value)


def test_bad_line_is_found_among_many(tmp_path):
  lines = [f"{u} {u + 1} {u + 2}" for u in range(1, 5001)]
  lines[3210] += " 7x"
  path = _write(tmp_path / "Beauty.txt", "\n".join(lines) + "\n")
  with pytest.raises(DataFormatError) as info:
    amazon.read_sequences_file(path)
  _assert_format_error(info, path, 3211)
  assert info.value.got == lines[3210]


def _reference_parse(text: bytes) -> list[list[int]] | int:
  """Slow, obviously-correct reader: the lines' ints, or the 1-based line of the first bad one."""
  if not text.strip():
    return 1
  lines = text.split(b"\n")
  if lines[-1] == b"":
    lines.pop()
  rows, users = [], set()
  for number, line in enumerate(lines, start=1):
    tokens = line.split()
    if len(tokens) < 2 or not all(t.isdigit() and len(t) <= 18 and int(t) > 0 for t in tokens):
      return number
    if int(tokens[0]) in users:
      return number
    users.add(int(tokens[0]))
    rows.append([int(t) for t in tokens])
  return rows


def test_fast_path_agrees_with_a_reference_parser_on_mutated_files(tmp_path):
  rng = np.random.default_rng(0)
  base = "1 10 20 30\n2 40 10\n3 5 6 7 8 9\n4 12 13\n"
  alphabet = [" ", "  ", "\t", "\n", "\r\n", "0", "7", "1", "a", "-", ".", "", "\x00", "é"]
  path = tmp_path / "Beauty.txt"
  outcomes = set()
  for _ in range(400):
    chars = list(base)
    for _ in range(rng.integers(0, 3)):
      at = rng.integers(0, len(chars) + 1)
      if rng.random() < 0.5 and at < len(chars):
        chars[at] = alphabet[rng.integers(len(alphabet))]
      else:
        chars.insert(at, alphabet[rng.integers(len(alphabet))])
    text = "".join(chars).encode("utf-8")
    path.write_bytes(text)
    expected = _reference_parse(text)
    if isinstance(expected, int):
      with pytest.raises(DataFormatError) as info:
        amazon.read_sequences_file(path)
      assert info.value.line == expected, text
      outcomes.add("error")
    else:
      users, offsets, items = amazon.read_sequences_file(path)
      got = [[int(u), *items[a:b].tolist()] for u, a, b in zip(users, offsets, offsets[1:])]
      assert got == expected, text
      outcomes.add("ok")
  assert outcomes == {"ok", "error"}


BAD_ATTRIBUTES = [
    ("invalid_json", '{"1": [1, 2],\n"2": [3,]\n}', 2, "invalid JSON"),
    ("truncated_json", '{"1": [1, 2],\n"2": [3', 2, "invalid JSON"),
    ("not_an_object", "\n[[1, 2]]", 2, "expected a JSON object"),
    ("value_not_a_list", '{\n"1": [1],\n"2": 3\n}', 3, "item 2 must be a list of integer ids"),
    ("float_attribute", '{"1": [1.5]}', 1, "item 1 must be a list of integer ids"),
    ("string_attribute", '{\n"1": ["a"]\n}', 2, 'found ["a"]'),
    ("bool_attribute", '{"1": [true]}', 1, "must be a list of integer ids"),
    ("zero_attribute", '{\n"1": [2],\n"3": [0]\n}', 3, "item 3 must be a list of integer ids >= 1"),
    ("nested_object", '{"1": {"a": 1}}', 1, 'found {"a": 1}'),
    ("bad_item_id", '{\n"x": [1]\n}', 2, "item id 'x' is not a positive integer"),
    ("item_id_zero", '{"0": [1]}', 1, "item id '0' is not a positive integer"),
    ("duplicate_item", '{\n"1": [1],\n"1": [2]\n}', 3, "item 1 is listed twice"),
    ("empty_file", "", 1, "file is empty"),
    ("bad_utf8", b'{"1": [1],\n"2": [\xff]}', 2, "not valid UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(
    "content,line,words", [c[1:] for c in BAD_ATTRIBUTES], ids=[c[0] for c in BAD_ATTRIBUTES]
)
def test_bad_attributes_file(tmp_path, content, line, words):
  path = _write(tmp_path / "Beauty_item2attributes.json", content)
  with pytest.raises(DataFormatError) as info:
    amazon.read_item_attributes_file(path)
  _assert_format_error(info, path, line)
  assert words in str(info.value)


def test_bad_attribute_file_is_named_when_loading(tmp_path):
  folder = _tiny(tmp_path, attrs='{"1": [1],\n"5": "Face"}')
  with pytest.raises(DataFormatError) as info:
    amazon.load(tmp_path, "amazon-beauty")
  _assert_format_error(info, folder.absolute() / "Beauty_item2attributes.json", 2)


def test_invalid_datamaps_json(tmp_path):
  folder = _tiny(tmp_path, maps=None)
  path = _write(folder / "p5_beauty_datamaps.json", '{"id2item": {\n"1": "A",\n}')
  with pytest.raises(DataFormatError, match="invalid JSON") as info:
    amazon.load(tmp_path, "amazon-beauty")
  _assert_format_error(info, path.absolute(), 3)


# --------------------------------------------------------------------------------------------
# Missing data and names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports"])
def test_missing_dataset_says_what_to_put_where(tmp_path, name):
  files = amazon.DATASETS[name]
  with pytest.raises(DatasetNotFoundError) as info:
    amazon.load(tmp_path, name, download=True)  # nothing to download either
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  folder = tmp_path / files.directory
  assert f"expected {folder / files.sequences}." in message
  assert f"{files.attributes} (optional, item attributes) in {folder}{os.sep}" in message
  assert files.datamaps in message
  for hint in ("RUCAIBox/CIKM2020-S3Rec", "no official download URL with a checksum",
               "--data_dir", "GENREC_DATA_DIR"):  # fmt: skip
    assert hint in message


def test_attribute_file_alone_is_not_a_dataset(tmp_path):
  _write(tmp_path / "amazon-sports" / "Sports_and_Outdoors_item2attributes.json", '{"1": [1]}')
  with pytest.raises(DatasetNotFoundError, match="Sports_and_Outdoors.txt"):
    amazon.load(tmp_path, "amazon-sports")


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="amazon-beauty, amazon-sports"):
    amazon.load(tmp_path, "amazon-toys")


def test_dataset_table():
  assert {n: (f.directory, f.stem, f.datamaps) for n, f in amazon.DATASETS.items()} == {
      "amazon-beauty": ("amazon-beauty", "Beauty", "p5_beauty_datamaps.json"),
      "amazon-sports": ("amazon-sports", "Sports_and_Outdoors", "p5_sports_datamaps.json"),
  }


# --------------------------------------------------------------------------------------------
# Registry, experiments, report
# --------------------------------------------------------------------------------------------


def test_load_task_amazon_beauty(data_dir):
  from experiments.sasrec_amazon import get_config
  from genrec_jax.data.registry import load_task

  cfg = get_config()
  cfg.data.max_seq_len = 20
  task = load_task(cfg, str(data_dir))
  assert task.num_items == 12_102 and task.catalog.tolist() == list(range(1, 12_102))
  assert len(task.split.train) == len(task.split.val) == len(task.split.test) == 22_363
  for examples in (task.split.train, task.split.val, task.split.test):
    targets = examples.targets_UxN[examples.targets_UxN > 0]
    assert np.isin(targets, task.catalog).all()
    assert examples.ids_UxN.max() <= 12_101


def test_hstu_time_bias_is_refused_without_timestamps(data_dir):
  from experiments.hstu_amazon import get_config
  from genrec_jax.data.registry import load_task

  cfg = get_config()
  assert cfg.model.use_time_bias is False and cfg.data.max_seq_len == 50
  assert cfg.model.attn_norm_len == 61 and not cfg.paper
  cfg.model.use_time_bias = True
  with pytest.raises(ValueError, match="use_time_bias=False"):
    load_task(cfg, str(data_dir))


def test_sasrec_config_and_anchors_follow_the_dataset(monkeypatch):
  from experiments import sasrec_amazon
  from genrec_jax import recipes

  cfg = sasrec_amazon.get_config()
  assert (cfg.data.dataset, cfg.data.max_seq_len, cfg.model.name) == ("amazon-beauty", 50, "sasrec")
  assert cfg.paper.to_dict() == sasrec_amazon.PAPER_SASREC["amazon-beauty"]
  seen = []
  monkeypatch.setattr(recipes, "run_sequential", lambda c, *args: seen.append(c.paper.to_dict()))
  run = recipes.run_sequential_with_anchors(sasrec_amazon.PAPER_SASREC)
  cfg.data.dataset = "amazon-sports"
  cfg.lock()  # as config_flags hands it over
  run(cfg, "w", "d", False, False)
  cfg.data.dataset = "ml-1m"
  run(cfg, "w", "d", False, False)
  assert seen == [sasrec_amazon.PAPER_SASREC["amazon-sports"], {}]


def test_report_shows_at5_columns_when_the_paper_has_them():
  from genrec_jax import report

  test = {"hr@5": 0.04, "ndcg@5": 0.025, "hr@10": 0.06, "ndcg@10": 0.03, "mrr": 0.02}
  table = report.comparison_table({"test": test}, {"hr@5": 0.0387, "ndcg@5": 0.0249})
  assert table.splitlines()[0] == "| | hr@5 | ndcg@5 | hr@10 | ndcg@10 | mrr |"
  plain = report.comparison_table({"test": test}, {"ndcg@10": 0.0318})
  assert plain.splitlines()[0] == "| | hr@10 | ndcg@10 | mrr |"


def test_sasrec_bce_config_is_s3recs_sasrec():
  """experiments/sasrec_bce_amazon.py: BCE with one negative, dot product, left-padded positions
  (newest event at N − 1) and S3-Rec's model (post-LN, D 64, 2 heads, FFN 256, dropout 0.5, batch
  256, Adam β₂ 0.999); data and every other setting as the Amazon SASRec."""
  from experiments import sasrec_amazon, sasrec_bce_amazon

  cfg, base = sasrec_bce_amazon.get_config(), sasrec_amazon.get_config()
  assert (cfg.loss.name, cfg.loss.temperature, cfg.model.score, cfg.model.positions) == ("bce", 1.0, "dot", "end")
  s3rec = dict(sasrec_block="post_ln", embed_dim=64, num_heads=2, ffn_hidden_dim=256, attn_dropout=0.5,
               dropout=0.5, input_dropout=0.5, num_blocks=2)
  assert {k: cfg.model[k] for k in s3rec} == s3rec
  assert (cfg.train.batch_size, cfg.train.learning_rate, cfg.train.num_epochs, cfg.train.patience) == (256, 1e-3, 201, 20)
  assert (cfg.train.b1, cfg.train.b2, cfg.train.weight_decay) == (0.9, 0.999, 0.0)
  assert base.model.positions == "start" and base.model.sasrec_block == "pre_ln"
  assert cfg.data.to_dict() == base.data.to_dict()
  changed = set(s3rec) | {"score", "positions"}
  assert {k: v for k, v in cfg.model.items() if k not in changed} == \
      {k: v for k, v in base.model.items() if k not in changed}
