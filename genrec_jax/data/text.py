"""Item texts, aligned with the item table, and their frozen sentence embeddings.

HLLM (arXiv 2409.12740) feeds its item LLM `item_prompt` followed by `f"{key}: {value}"` for each
text field (bytedance/HLLM code/REC/data/dataset/batchset.py; prompt 'Compress the following
sentence into embedding: '); items without text and the padding row get the empty string.
MovieLens has a title (with the year in brackets) and genres, so an item's text is

  "title: {title}, year: {year}, genres: {g1}, {g2}"     e.g. id 1 of ML-1M:
  "title: Toy Story, year: 1995, genres: Animation, Children's, Comedy"

Deliberate differences from HLLM, both configurable through `prompt` / the template above:
  * fields are separated by ", " (HLLM concatenates them with no separator, which glues
    "...1995)genres:" into one word-piece run);
  * no prompt by default. HLLM's prompt is an instruction to a decoder LLM read at its last token;
    all-MiniLM-L6-v2 mean-pools every token, so a shared 8-word prefix pulls all items together
    (measured on 30 ML-100K titles: mean pairwise cosine 0.45 -> 0.81, spread 0.09 -> 0.04).
    Pass `prompt=HLLM_ITEM_PROMPT` to get HLLM's text.
The year is parsed out of the title (the last "(YYYY)"); a title without one gets no year field.
Amazon (S3-Rec/P5 files) has no titles, only attribute ids, so text features are MovieLens only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from genrec_jax.config import ConfigError
from genrec_jax.data import amazon, movielens

HLLM_ITEM_PROMPT = "Compress the following sentence into embedding: "
# model.item_features values (models/sequential.py ITEM_FEATURES; data never imports models)
ITEM_FEATURES = ("id", "text", "id+text")
_YEAR = re.compile(r"\s*\((\d{4})\)")

PathLike = str | os.PathLike


def split_title_year(title: str) -> tuple[str, int | None]:
  """'Toy Story (1995)' -> ('Toy Story', 1995): removes the last '(YYYY)', keeps the rest.

  'Land Before Time III: ... (1995) (V)' -> ('Land Before Time III: ... (V)', 1995);
  'unknown' -> ('unknown', None). Surrounding whitespace is stripped.
  """
  matches = list(_YEAR.finditer(title))
  if not matches:
    return title.strip(), None
  m = matches[-1]
  rest = (title[: m.start()] + title[m.end() :]).strip()
  return re.sub(r"\s+", " ", rest), int(m.group(1))


def movielens_item_text(title: str, genres: Sequence[str], prompt: str = "") -> str:
  """The text of one movie: prompt + 'title: T, year: Y, genres: G1, G2' (empty fields omitted)."""
  name, year = split_title_year(title)
  fields = [f"title: {name}"] if name else []
  if year is not None:
    fields.append(f"year: {year}")
  if genres:
    fields.append(f"genres: {', '.join(genres)}")
  return prompt + ", ".join(fields) if fields else ""


def _text_unavailable(dataset: str) -> ConfigError:
  if dataset in amazon.DATASETS:
    return ConfigError(
        f"text item features are only available for MovieLens for now: {dataset} (S3-Rec/P5 "
        f"files) has no titles, only attribute ids, whose text would mean nothing. Use "
        f"--config.model.item_features=id."
    )
  known = (*movielens.DATASETS, *amazon.DATASETS)
  return ConfigError(f"unknown dataset {dataset!r}; known: {known}")


def item_texts(
    dataset: str,
    data_dir: PathLike,
    num_items: int | None = None,
    *,
    prompt: str = "",
    download: bool = False,
) -> list[str]:
  """Texts indexed by item id, one per row of the item table; row 0 (padding) is ''.

  Ids missing from the metadata file (gaps in MovieLens ids) get '' too. `num_items` (the rows of
  `registry.load_task(...).num_items`) defaults to max movie id + 1; a smaller value is an error.
  """
  if dataset not in movielens.DATASETS:
    raise _text_unavailable(dataset)
  movies = movielens.load_movies(data_dir, dataset, download=download)
  rows = int(movies.item.max()) + 1 if num_items is None else num_items
  if len(movies.item) and movies.item.max() >= rows:
    raise ValueError(f"{dataset} has movie id {movies.item.max()}, beyond num_items={rows}")
  if (movies.item <= 0).any():
    raise ValueError(f"{dataset} has a movie id <= 0; id 0 is the padding row")
  texts = [""] * rows
  for item, title, genres in zip(movies.item.tolist(), movies.title, movies.genres):
    texts[item] = movielens_item_text(title, genres, prompt)
  return texts


def load_item_text_embeddings(
    cfg: ml_collections.ConfigDict,
    data_dir: PathLike,
    num_items: int | None = None,
    *,
    cache_dir: PathLike | None = None,
) -> np.ndarray | None:
  """float32 [num_items, 384] frozen text embeddings for `build_model`, None for item_features='id'.

  Computed once with all-MiniLM-L6-v2 and cached on disk (see data/text_cache.py); rows without
  text (padding, id gaps) are zeros. Raises ConfigError for datasets without item text.
  """
  features = cfg.model.get("item_features", "id")
  if features not in ITEM_FEATURES:
    raise ConfigError(f"unknown model.item_features {features!r}; expected one of {ITEM_FEATURES}")
  if features == "id":
    return None
  from genrec_jax.data import text_cache  # pylint: disable=g-import-not-at-top  (heavy deps)

  texts = item_texts(cfg.data.dataset, data_dir, num_items, download=cfg.data.download)
  return text_cache.item_text_embeddings(texts, text_cache.MINILM, cache_dir)
