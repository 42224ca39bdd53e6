"""Item-text tokenizers trained with sentencepiece (data/item_tokenizer.py)."""

from __future__ import annotations

import numpy as np
import pytest

from genrec_jax.data import item_tokenizer, text

TEXTS = [""] + [f"title: Movie {w} {i}, year: {1950 + i}, genres: {g}"
                for i, (w, g) in enumerate(zip(["Red", "Blue", "Green", "Night", "Day"] * 8,
                                               ["Drama", "Comedy", "Horror", "Drama, Romance"] * 10))]


def test_trained_tokenizer_ids_pad_unk_and_determinism():
  tok = item_tokenizer.train_tokenizer(TEXTS, vocab_size=60)
  assert 8 <= tok.vocab_size <= 60
  encoded = tok.encode_batch(TEXTS)
  assert encoded[0].ids == []  # the empty text (padding row) has no tokens
  flat = np.concatenate([e.ids for e in encoded[1:]])
  assert flat.min() > item_tokenizer.PAD_ID and flat.max() < tok.vocab_size  # 0 stays padding
  # Pieces join back to the text (sentencepiece's ▁ marks a space).
  assert "".join(tok.pieces(TEXTS[3])).replace("▁", " ").strip() == TEXTS[3]
  # A character never seen in training is <unk>, not a crash.
  assert item_tokenizer.UNK_ID in tok.encode_batch(["title: Ω"])[0].ids
  again = item_tokenizer.train_tokenizer(TEXTS, vocab_size=60)
  assert again.model_proto == tok.model_proto  # one thread, no sampling: deterministic


def test_item_tokenizer_is_cached_by_texts_and_settings(tmp_path):
  a = item_tokenizer.item_tokenizer(TEXTS, 60, cache_dir=tmp_path)
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) == 1 and files[0].startswith("spm-unigram-v60-")
  b = item_tokenizer.item_tokenizer(TEXTS, 60, cache_dir=tmp_path)  # a hit: same file
  assert b.model_proto == a.model_proto and len(list(tmp_path.iterdir())) == 1
  item_tokenizer.item_tokenizer(TEXTS[:-1], 60, cache_dir=tmp_path)  # other texts: a new entry
  item_tokenizer.item_tokenizer(TEXTS, 60, "bpe", cache_dir=tmp_path)  # other settings too
  assert len(list(tmp_path.iterdir())) == 3


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="every item text is empty"):
    item_tokenizer.train_tokenizer(["", "  "], 60)
  with pytest.raises(ValueError, match="model_type"):
    item_tokenizer.train_tokenizer(TEXTS, 60, "wordpiece")


def test_ml1m_item_texts_tokenizer(data_dir):
  texts = text.item_texts("ml-1m", data_dir, 3953)
  tok = item_tokenizer.train_tokenizer(texts, vocab_size=2000)
  lengths = np.array([len(e.ids) for e in tok.encode_batch(texts) if e.ids])
  print(f"ML-1M item texts: {len(lengths)} non-empty, {lengths.mean():.1f} tokens on average, "
        f"max {lengths.max()} (vocab {tok.vocab_size})")
  assert tok.vocab_size == 2000 and len(lengths) == 3883 and lengths.max() <= 64
