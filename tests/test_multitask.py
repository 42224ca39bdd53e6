"""Multi-task hybrid: rating alignment on real ML-100K, heads, loss weights, metrics, smoke runs."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import rating_metrics
from genrec_jax.data import pipeline, ratings
from genrec_jax.models.multitask import build_multitask_model
from genrec_jax.train import multitask

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = {  # a tiny HSTU on ML-100K
    "data.dataset": "ml-100k", "data.max_seq_len": 30, "model.embed_dim": 16, "model.dqk": 16,
    "model.dv": 16, "model.num_blocks": 1, "train.batch_size": 64, "train.eval_batch_size": 512,
    "loss.num_negatives": 32, "heads.hidden": 16, "cf.dim": 8,
}


def small_config(module="genre_multitask_movielens", **overrides):
  import importlib

  cfg = importlib.import_module(f"experiments.{module}").get_config()
  for path, value in {**SMALL, **overrides}.items():
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.fixture(scope="module")
def rated_task(data_dir):
  return ratings.load_rated_task(small_config(), str(data_dir))


@pytest.fixture(scope="module")
def udata(data_dir):
  """(user, item) -> rating read straight from u.data (ML-100K has one rating per pair)."""
  raw = np.loadtxt(data_dir / "ml-100k" / "u.data", dtype=np.int64)
  return {(u, i): r for u, i, r, _ in raw}


def _check_against_file(ex, rx, udata):
  rows, cols = np.nonzero(ex.targets_UxN)
  assert len(rows) > 0
  want = [udata[(int(ex.user_U[r]), int(ex.targets_UxN[r, c]))] for r, c in zip(rows, cols)]
  np.testing.assert_array_equal(rx.rating_UxN[rows, cols], np.asarray(want, np.float32))
  np.testing.assert_array_equal(rx.rating_UxN[ex.targets_UxN == 0], 0.0)


def test_ratings_align_with_udata(rated_task, udata, ml100k_task):
  task, rated = rated_task
  for name in ("train", "val", "test"):
    _check_against_file(getattr(task.split, name), getattr(rated, name), udata)
  # the same examples as the library's load_task (other max_seq_len, so compare users and order)
  np.testing.assert_array_equal(task.split.train.user_U, ml100k_task.split.train.user_U)


def test_ratings_align_with_strided_windows(data_dir, udata):
  # train_stride masks the targets a window does not own; the ratings follow the same mask
  task, rated = ratings.load_rated_task(
      small_config(**{"data.train_windows": "all", "data.train_stride": 3}), str(data_dir))
  assert int((task.split.train.targets_UxN != 0).sum(1).max()) == 3
  _check_against_file(task.split.train, rated.train, udata)


def test_alignment_check_fails_on_misaligned_events(rated_task, data_dir):
  task, rated = rated_task
  shifted = ratings.RatedExamples(np.roll(rated.val.event_UxN, 1, axis=0), rated.val.rating_UxN, rated.val.user_U)
  bad = ratings.RatedSplit(rated.train, shifted, rated.test)
  from genrec_jax.data import movielens

  items = movielens.load_ratings(str(data_dir), "ml-100k").item
  with pytest.raises(AssertionError):
    bad.check(task.split, np.asarray(items))


@pytest.mark.parametrize("packed", [True, False])
def test_aux_batches_carry_rating_and_user_at_target_tokens(rated_task, udata, packed):
  task, rated = rated_task
  ex, rx = task.split.train, rated.train
  aux = multitask._aux(ex, rx)  # pylint: disable=protected-access
  b = ratings.aux_train_batch(ex, aux, 64, seed=0, packed=packed, step=3)
  plain = pipeline.train_batch(ex, 64, 0, packed, 3)
  for k, v in plain.items():
    np.testing.assert_array_equal(b[k], v)
  has = b["targets"] != 0
  np.testing.assert_array_equal(b["target_rating"] > 0, has)
  users = ex.user_U[b["user"][has] - 1]
  want = [udata[(int(u), int(i))] for u, i in zip(users, b["targets"][has])]
  np.testing.assert_array_equal(b["target_rating"][has] / 2.0, want)
  # eval: one rating per user slot, that of the held-out event
  (eb, n), *_ = ratings.aux_eval_batches(task.split.test, multitask._aux(task.split.test, rated.test), 128, packed)
  want = [udata[(int(task.split.test.user_U[j]), int(eb["target"][j]))] for j in range(n)]
  np.testing.assert_array_equal(eb["target_rating"][:n] / 2.0, want)


def _batch(rated_task, cfg, step=0):
  task, rated = rated_task
  ex = task.split.train
  b = ratings.aux_train_batch(ex, multitask._aux(ex, rated.train), cfg.train.batch_size, 0, True, step)
  return {k: jnp.asarray(v, jnp.int32) for k, v in b.items()}


def _model_and_params(rated_task, cfg):
  task, _ = rated_task
  model = build_multitask_model(cfg, task.num_items, len(task.split.train), 3.5)
  tx = multitask.trainer.make_optimizer(cfg)
  return model, multitask.init_state(model, tx, cfg, jax.random.key(0))["params"]


def test_head_shapes_and_blend_identity(rated_task):
  cfg = small_config(**{"cf.on": True, "cf.weight": 0.7})
  model, params = _model_and_params(rated_task, cfg)
  batch = _batch(rated_task, cfg)
  heads = jax.jit(lambda p, b: multitask.head_outputs(model, p, b, multitask.TASKS, deterministic=True))
  out = heads(params, batch)
  r, n = batch["ids"].shape
  assert out["rating_BxN"].shape == out["liked_logit_BxN"].shape == (r, n)
  assert out["query_BxNxQ"].shape == (r, n, 16 + 8)
  assert out["table_VxQ"].shape == (model.seq.num_items, 16 + 8)
  # <q, k_i> / τ = w cos(u, e_i) / τ + (1 − w) <P_u, Q_i>
  user, table = jax.jit(lambda p, b: (model.apply({"params": p}, b),
                                      model.apply({"params": p}, method=model.item_table)))(params, batch)
  user, table = np.asarray(user), np.asarray(table)
  p = np.asarray(params["cf_user"])[np.asarray(batch["user"]) - 1]
  q = np.asarray(params["cf_item"])
  tau, w = cfg.loss.temperature, 0.7
  want = w * user @ table.T / tau + (1 - w) * p @ q.T
  got = np.asarray(out["query_BxNxQ"]) @ np.asarray(out["table_VxQ"]).T / tau
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_loss_weights_and_switched_off_heads(rated_task):
  task, _ = rated_task
  # a head that is off is not built (parameter structure only: no compile)
  cfg_off = small_config(**{"tasks.liked.on": False})
  model_off = build_multitask_model(cfg_off, task.num_items, len(task.split.train), 3.5)
  dummy = _batch(rated_task, cfg_off)
  shapes = jax.eval_shape(lambda k: model_off.init(k, dummy, method=model_off.init_all), jax.random.key(0))
  assert "liked_head" not in shapes["params"] and "rating_head" in shapes["params"]
  assert "cf_user" not in shapes["params"]
  # weights (1, 0.3, 0): L = L_retrieval + 0.3 L_rating, and the weight-0 head gets zero gradient
  cfg = small_config(**{"tasks.rating.weight": 0.3, "tasks.liked.weight": 0.0})
  model, params = _model_and_params(rated_task, cfg)
  batch = _batch(rated_task, cfg)
  catalog = jnp.arange(1, model.seq.num_items, dtype=jnp.int32)
  loss_fn = multitask.make_loss_fn(model, cfg, catalog)
  (total, parts), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch, jax.random.key(1))
  assert set(parts) == {"retrieval", "rating", "liked"}
  np.testing.assert_allclose(total, parts["retrieval"] + 0.3 * parts["rating"], rtol=1e-6)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(grads["liked_head"]))
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(grads["rating_head"]))
  # MSE and BCE against the batch's ratings, computed in NumPy
  out = jax.jit(lambda p, b: multitask.head_outputs(model, p, b, ("rating", "liked"), deterministic=True))(params, batch)
  has = np.asarray(batch["target_rating"]) > 0
  r = np.asarray(batch["target_rating"])[has] / 2.0
  err = np.asarray(out["rating_BxN"])[has] - r
  np.testing.assert_allclose(multitask.mse_loss(out, batch, None, cfg, catalog), np.mean(err ** 2), rtol=1e-5)
  prob = 1.0 / (1.0 + np.exp(-np.asarray(out["liked_logit_BxN"], np.float64)[has]))
  bce = -np.mean(np.where(r >= 4, np.log(prob), np.log(1.0 - prob)))
  np.testing.assert_allclose(multitask.liked_bce_loss(out, batch, None, cfg, catalog), bce, rtol=1e-5)
  with pytest.raises(multitask.ConfigError, match="every task is off"):
    multitask.active_tasks(small_config(**{f"tasks.{t}.on": False for t in multitask.TASKS}))
  with pytest.raises(multitask.ConfigError, match="unknown tasks.rating.loss"):
    multitask.active_tasks(small_config(**{"tasks.rating.loss": "nope"}))


def test_metrics_against_numpy():
  rng = np.random.default_rng(0)
  pred, true = rng.uniform(1, 5, 200), rng.integers(1, 6, 200).astype(float)
  assert rating_metrics.rmse(pred, true) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))
  assert rating_metrics.mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)))
  prob, y = rng.uniform(0, 1, 200), rng.integers(0, 2, 200)
  want = -np.mean([np.log(p) if t else np.log(1 - p) for p, t in zip(prob, y)])
  assert rating_metrics.logloss(prob, y) == pytest.approx(want)
  score = rng.integers(0, 8, 300).astype(float)  # many ties
  label = rng.integers(0, 2, 300)
  pos, neg = score[label == 1], score[label == 0]
  naive = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
  assert rating_metrics.auc(score, label) == pytest.approx(naive)
  assert rating_metrics.auc(-score, label) == pytest.approx(1 - naive)
  assert rating_metrics.auc(np.arange(5.0), np.array([0, 0, 1, 1, 1])) == 1.0
  assert np.isnan(rating_metrics.auc(score, np.ones(300)))


def test_one_epoch_smoke_ml100k(rated_task, tmp_path):
  cfg = small_config(**{"train.num_epochs": 1, "cf.on": True})
  task, rated = rated_task
  res = multitask.fit(cfg, task, rated, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  for split in ("val", "test"):
    for k in ("hr@10", "ndcg@10", "rmse", "mae", "auc", "logloss"):
      assert np.isfinite(saved[split][k]), (split, k)
    assert saved[split]["num_users"] == len(task.split.test)
  assert 0 < res["cf_blend_weight"] < 1 and res["best_epoch"] == 1
  assert saved["test"]["rmse"] < 1.5  # the head starts at the mean rating (std of ML-100K ≈ 1.13)
  assert "| retrieval 1, rating 1, liked 1 + CF" in multitask.results_table([res])


def test_docs_example_is_the_experiment_and_runs(data_dir, tmp_path):
  doc = (REPO / "docs" / "extending.md").read_text()
  block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
  src = (REPO / "experiments" / "example_huber_rating.py").read_text()
  assert block == src
  cfg = small_config("example_huber_rating", **{"train.num_epochs": 1, "data.max_seq_len": 20})
  res = multitask.run(cfg, str(tmp_path / "huber"), str(data_dir), False, False)
  assert res["config"]["tasks"]["rating"]["loss"] == "huber"
  assert res["test"]["auc"] is None and np.isfinite(res["test"]["rmse"])
