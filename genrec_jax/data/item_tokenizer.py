"""Item-text tokenizers trained with sentencepiece, for item LLMs trained from scratch.

A pretrained LLM brings its own tokenizer (SmolLM2: `tokenizers`, models/hllm.py). An item LLM
trained from scratch (hllm.item_llm='scratch') gets a sentencepiece model trained on the catalog's
item texts instead: a vocabulary sized for the catalog, not for the web.

  id 0 = <pad> (our token batches are right-padded with 0), 1 = <unk>; no BOS/EOS (HLLM appends
  its own [ITEM] slot after the text).

Training is deterministic for given texts and settings (one thread, no input sampling), and the
model is cached on disk ($GENREC_CACHE_DIR, else ~/.cache/genrec_jax) under a name holding the
sha256 of (format, settings, texts), so a resumed or re-evaluated run tokenizes exactly as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
import types
from collections.abc import Sequence

MODEL_TYPES = ("unigram", "bpe")
FORMAT = 1  # bump when the meaning of a cached model changes
PAD_ID, UNK_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class SentencePieceTokenizer:
  """A trained sentencepiece model with the `tokenizers.Tokenizer` call the item LLM code uses:
  `encode_batch(texts)[i].ids`."""

  model_proto: bytes

  @property
  def _processor(self):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    sp = self.__dict__.get("_sp")
    if sp is None:
      sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
      object.__setattr__(self, "_sp", sp)
    return sp

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  def encode_batch(self, texts: Sequence[str]) -> list[types.SimpleNamespace]:
    return [types.SimpleNamespace(ids=ids) for ids in self._processor.encode(list(texts))]

  def pieces(self, text: str) -> list[str]:
    return self._processor.encode(text, out_type=str)


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, model_type: str = "unigram"
) -> SentencePieceTokenizer:
  """Trains a sentencepiece model on the non-empty `texts` (in memory).

  The vocabulary is at most `vocab_size` pieces: a small corpus may support fewer (sentencepiece
  then stops early rather than failing: hard_vocab_limit=False).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  if model_type not in MODEL_TYPES:
    raise ValueError(f"unknown tokenizer model_type {model_type!r}; expected one of {MODEL_TYPES}")
  corpus = [t for t in texts if t.strip()]
  if not corpus:
    raise ValueError("cannot train an item tokenizer: every item text is empty")
  if vocab_size < 8:
    raise ValueError(f"tokenizer vocab_size must be >= 8, got {vocab_size}")
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus),
      model_writer=out,
      model_type=model_type,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      character_coverage=1.0,
      pad_id=PAD_ID,
      unk_id=UNK_ID,
      bos_id=-1,
      eos_id=-1,
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      minloglevel=2,
  )
  return SentencePieceTokenizer(out.getvalue())


def cache_key(texts: Sequence[str], vocab_size: int, model_type: str) -> str:
  payload = json.dumps([FORMAT, vocab_size, model_type, list(texts)], ensure_ascii=False)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def item_tokenizer(
    texts: Sequence[str], vocab_size: int, model_type: str = "unigram",
    cache_dir: str | os.PathLike | None = None,
) -> SentencePieceTokenizer:
  """The tokenizer trained on `texts` with these settings: loaded from the cache if there, else
  trained and cached (written to a temporary name, then renamed into place)."""
  from genrec_jax.data.text_cache import default_cache_dir  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = root / f"spm-{model_type}-v{vocab_size}-{cache_key(texts, vocab_size, model_type)[:20]}.model"
  if path.exists():
    return SentencePieceTokenizer(path.read_bytes())
  tok = train_tokenizer(texts, vocab_size, model_type)
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=root, suffix=".tmp", delete=False) as f:
    f.write(tok.model_proto)
  os.replace(f.name, path)
  return tok
