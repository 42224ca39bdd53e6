"""MF-BPR / two-tower / YouTubeDNN: losses vs NumPy, logQ estimates, users reader, model shapes,
tower data vs the shared interaction matrices, and a small ML-100K run writing results.json."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import losses
from genrec_jax.data import interactions, movielens
from genrec_jax.data.errors import DataFormatError
from genrec_jax.models import towers as tower_models
from genrec_jax.train import towers


def _np_softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


# ------------------------------------------------------------------------------- losses ----


def test_bpr_loss_and_l2_match_numpy():
  rng = np.random.default_rng(0)
  pos, neg = rng.normal(size=7), rng.normal(size=7)
  want = np.mean([-np.log(1.0 / (1.0 + np.exp(-(p - n)))) for p, n in zip(pos, neg)])
  np.testing.assert_allclose(losses.bpr_loss(jnp.asarray(pos), jnp.asarray(neg)), want, rtol=1e-5)
  a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 1))
  np.testing.assert_allclose(losses.l2_penalty(jnp.asarray(a), jnp.asarray(b)),
                             (np.sum(a**2) + np.sum(b**2)) / 4, rtol=1e-5)


def _np_in_batch(user, item, log_q, tau, ids, extra=None, in_batch=True):
  """Row by row: candidates = the batch's items (minus copies of the row's positive) + extras."""
  total = 0.0
  for b in range(len(user)):
    logits = []
    for j in range(len(item)):
      if j != b and (not in_batch or ids[j] == ids[b]):
        continue
      logits.append(user[b] @ item[j] / tau - (0.0 if log_q is None else log_q[j]))
    pos = user[b] @ item[b] / tau - (0.0 if log_q is None else log_q[b])
    if extra is not None:
      neg, log_q_k, neg_ids = extra
      for k in range(len(neg)):
        if neg_ids[k] != ids[b]:
          logits.append(user[b] @ neg[k] / tau - log_q_k[k])
    logits = np.asarray(logits)
    total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - pos
  return total / len(user)


@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("in_batch", [True, False])
def test_in_batch_softmax_with_logq_matches_numpy(with_extra, in_batch):
  if not in_batch and not with_extra:
    pytest.skip("no negatives at all")
  rng = np.random.default_rng(1)
  b, d, k = 6, 5, 4
  user, item = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  ids = np.array([3, 7, 3, 9, 1, 4])  # rows 0 and 2 share their positive: masked for each other
  log_q = np.log(rng.uniform(0.01, 1.0, size=b))
  extra = None
  if with_extra:
    neg_ids = np.array([2, 7, 8, 5])  # 7 is row 1's positive: masked for row 1
    extra = (rng.normal(size=(k, d)), np.full(k, np.log(k / 50.0)), neg_ids)
  want = _np_in_batch(user, item, log_q, 0.1, ids, extra, in_batch)
  got = losses.in_batch_softmax_loss(
      jnp.asarray(user), jnp.asarray(item), jnp.asarray(log_q), 0.1,
      None if extra is None else tuple(jnp.asarray(x) for x in extra),
      item_ids_B=jnp.asarray(ids), in_batch=in_batch)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_logq_changes_the_loss_and_none_means_no_correction():
  rng = np.random.default_rng(2)
  user, item = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 3)))
  plain = losses.in_batch_softmax_loss(user, item, None, 1.0)
  zero = losses.in_batch_softmax_loss(user, item, jnp.zeros(5), 1.0)
  skew = losses.in_batch_softmax_loss(user, item, jnp.log(jnp.arange(1.0, 6.0)), 1.0)
  np.testing.assert_allclose(plain, zero, rtol=1e-6)
  assert abs(float(skew) - float(plain)) > 1e-3
  np.testing.assert_allclose(plain, _np_in_batch(np.asarray(user), np.asarray(item), None, 1.0, np.arange(5)), rtol=1e-5)


# --------------------------------------------------------------------------------- logQ ----


def test_empirical_log_q():
  counts = np.array([0, 3, 1, 0, 6])
  got = losses.empirical_log_q(counts, batch_size=4)
  np.testing.assert_allclose(got, np.log(4 * np.maximum(counts, 1) / 10.0), rtol=1e-6)


def test_streaming_frequency_update_matches_loop_and_estimates_frequency():
  alpha, v = 0.1, 6
  last, delta = jnp.zeros(v), jnp.full(v, 2.0)
  ref_last, ref_delta = np.zeros(v), np.full(v, 2.0)
  rng = np.random.default_rng(3)
  p = np.array([0.0, 0.5, 0.25, 0.1, 0.1, 0.05])
  update = jax.jit(losses.streaming_frequency_update, static_argnums=4)
  for t in range(1, 1001):
    ids = rng.choice(v, size=2, p=p)  # a batch of 2 draws (maybe the same item twice)
    for j in np.unique(ids):  # Yi et al. Algorithm 1, item by item
      ref_delta[j] = (1 - alpha) * ref_delta[j] + alpha * (t - ref_last[j])
      ref_last[j] = t
    last, delta = update(last, delta, jnp.asarray(ids), jnp.asarray(t), alpha)
  np.testing.assert_allclose(delta, ref_delta, rtol=1e-4)
  # Item 1 is in a batch of two draws with probability 1 - 0.5² = 0.75: δ ≈ 1 / 0.75.
  q1 = float(jnp.exp(losses.streaming_log_q(delta, jnp.asarray([1]))[0]))
  assert abs(q1 - 0.75) < 0.15, q1


# -------------------------------------------------------------------------- users files ----


def test_read_users_good_files(tmp_path, data_dir):
  f = tmp_path / "users.dat"
  f.write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
  u = movielens.read_users_file(f, "dat")
  assert list(u.user) == [1, 2] and u.gender == ("F", "M") and list(u.age) == [1, 56]
  assert u.occupation == ("10", "16") and u.zip_code == ("48067", "70072")
  g = tmp_path / "u.user"
  g.write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
  u = movielens.read_users_file(g, "uuser")
  assert list(u.age) == [24, 53] and u.gender == ("M", "F") and u.occupation == ("technician", "other")
  real = movielens.load_users(data_dir, "ml-1m")
  assert len(real) == 6040 and real.user[0] == 1


@pytest.mark.parametrize("line", ["3::X::25::15::55117", "3::M::26::15::55117", "3::M::25::15",
                                  "3::M::25::99::55117", "1::M::25::15::55117"])
def test_read_users_bad_line_names_file_and_line(tmp_path, line):
  f = tmp_path / "users.dat"
  f.write_text(f"1::F::1::10::48067\n2::M::56::16::70072\n{line}\n")
  with pytest.raises(DataFormatError) as e:
    movielens.read_users_file(f, "dat")
  assert e.value.line == 3 and str(f) in str(e.value) and f"{f}:3" in str(e.value)


def test_encode_users_buckets_ages():
  users = movielens.Users(np.array([1, 2, 3]), ("M", "F", "M"), np.array([17, 18, 60]),
                          ("writer", "artist", "writer"), ("12345", "12999", "T8H1N"), "x")
  ids, sizes = towers.encode_users(users, zip_prefix_len=2)
  assert sizes == (3, 8, 3, 3)
  np.testing.assert_array_equal(ids[:, 1], [1, 2, 7])  # <18 -> group 1, 18 -> 2, 56+ -> 7
  np.testing.assert_array_equal(ids[:, 0], [2, 1, 2])
  np.testing.assert_array_equal(ids[:, 3], [1, 1, 2])


# ------------------------------------------------------------------------------ models ----


def test_last_items():
  items = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
  got = towers.last_items(items, np.array([0, 0, 1]), np.array([2, 3, 0]), 2)
  np.testing.assert_array_equal(got, [[5, 6], [6, 7], [0, 0]])


def _cfg(name, **over):
  from experiments import mf_bpr_movielens, two_tower_movielens, youtubednn_movielens

  mod = {"mf_bpr": mf_bpr_movielens, "two_tower": two_tower_movielens, "youtubednn": youtubednn_movielens}[name]
  cfg = mod.get_config()
  for path, value in over.items():
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.mark.parametrize("name", tower_models.MODELS)
def test_model_shapes_and_normalisation(name):
  cfg = _cfg(name, **{"model.embed_dim": 8, "model.hidden_dims": (16,)})
  attrs = np.array([[0, 0], [1, 2], [2, 0], [3, 1], [0, 0]])
  model = tower_models.build_tower_model(cfg, num_users=3, num_items=5, user_vocab_sizes=(3, 4),
                                         item_attrs=attrs)
  batch = {"user": jnp.array([0, 2]), "user_feats": jnp.array([[1, 3], [2, 0]]),
           "history": jnp.array([[1, 2, 0], [0, 0, 0]])}
  params = model.init(jax.random.key(0), batch, method=lambda m, b: (m.user_vectors(b), m.item_table()))
  u = model.apply(params, batch, method=model.user_vectors)
  table = model.apply(params, method=model.item_table)
  d = 9 if name == "mf_bpr" else 8  # MF folds its item bias into one more dimension
  assert u.shape == (2, d) and table.shape == (5, d)
  if name == "two_tower":
    np.testing.assert_allclose(jnp.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(table, axis=-1), 1.0, rtol=1e-5)
  if name == "mf_bpr":  # <[p_u, 1], [q_i, b_i]> = <p_u, q_i> + b_i
    p = params["params"]
    want = p["user_emb"][0] @ p["item_emb"][3] + p["item_bias"][3]
    np.testing.assert_allclose(u[0] @ table[3], want, rtol=1e-5)


def test_masked_mean_ignores_padding():
  emb = jnp.arange(12.0).reshape(1, 3, 4)
  got = tower_models.masked_mean(emb, jnp.array([[5, 0, 2]]))
  np.testing.assert_allclose(got, (emb[0, 0] + emb[0, 2])[None] / 2)
  np.testing.assert_allclose(tower_models.masked_mean(emb, jnp.zeros((1, 3), int)), 0.0)


# -------------------------------------------------------------------------------- data ----


@pytest.fixture(scope="module")
def ml100k_tower_data(data_dir):
  return towers.load_tower_data(_cfg("two_tower", **{"data.dataset": "ml-100k"}), str(data_dir))


def test_tower_data_matches_shared_interaction_split(ml100k_tower_data, data_dir):
  data = ml100k_tower_data
  shared = interactions.load_loo("ml-100k", str(data_dir))
  user_P, pos_P = data.pairs()
  items_P = data.train_items_UxT[user_P, pos_P]
  col = np.searchsorted(shared.items_I, items_P)
  want = shared.train_UxI.toarray()
  got = np.zeros_like(want)
  got[user_P, col] = 1
  np.testing.assert_array_equal(got, want)  # the same training (user, item) pairs
  np.testing.assert_array_equal(data.user_id_U, shared.test.user_U)
  np.testing.assert_array_equal(shared.items_I[shared.test.target_UxI.indices], data.test.target_U)
  assert data.user_feats_UxF.shape == (943, 4) and data.item_attrs_VxA.shape[0] == data.num_items
  # val history = training items; test history = training items + the val target
  u = 5
  n = data.train_len_U[u]
  np.testing.assert_array_equal(data.test.past_UxH[u, :n], data.train_items_UxT[u, :n])
  assert data.test.past_UxH[u, n] == data.val.target_U[u]


@pytest.mark.parametrize("name,over", [
    ("mf_bpr", {}),
    ("two_tower", {"loss.logq": "streaming", "loss.num_uniform_negatives": 64}),
    ("youtubednn", {"loss.num_uniform_negatives": 64}),
])
def test_small_ml100k_run_writes_results(ml100k_tower_data, tmp_path, name, over):
  cfg = _cfg(name, **{"data.dataset": "ml-100k", "train.num_epochs": 1, "train.batch_size": 2048,
                      "model.embed_dim": 16, "model.hidden_dims": (32,), **over})
  results = towers.fit(cfg, ml100k_tower_data, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["experiment"] == f"{name}_movielens" and saved["dataset"] == "ml-100k"
  for split in ("val", "test"):
    assert saved[split]["num_users"] == 943
    assert 0.0 <= saved[split]["ndcg@10"] <= saved[split]["hr@10"] <= 1.0
    assert math.isfinite(results[split]["ndcg@50"])
  with pytest.raises(FileExistsError):
    towers.fit(cfg, ml100k_tower_data, str(tmp_path))


def test_bad_config_is_a_config_error(ml100k_tower_data, tmp_path):
  from genrec_jax.config import ConfigError

  with pytest.raises(ConfigError, match="loss.logq"):
    towers.fit(_cfg("two_tower", **{"loss.logq": "bogus"}), ml100k_tower_data, str(tmp_path / "a"))
  with pytest.raises(ConfigError, match="bpr"):
    towers.fit(_cfg("mf_bpr", **{"loss.name": "softmax"}), ml100k_tower_data, str(tmp_path / "b"))


def test_sample_unseen_is_uniform_over_the_users_unseen_items():
  """BPR's negatives: never an item the user has seen; uniform over the rest (chi-square-free check:
  every unseen item's frequency within 5 sd of uniform)."""
  seen = np.zeros((3, 11), bool)
  seen[0, [1, 2, 3, 4, 5, 6]] = True  # user 0 has seen 6 of the 10 catalog items
  seen[1, [2]] = True
  catalog = jnp.arange(1, 11)
  users = jnp.asarray(np.repeat([0, 1, 2], 20000), jnp.int32)
  neg = np.asarray(losses.sample_unseen(jax.random.key(0), jnp.asarray(seen), users, catalog))
  for u, unseen in ((0, [7, 8, 9, 10]), (1, [1, 3, 4, 5, 6, 7, 8, 9, 10]), (2, list(range(1, 11)))):
    got = neg[u * 20000:(u + 1) * 20000]
    assert set(np.unique(got)) == set(unseen), u
    p = 1 / len(unseen)
    sd = np.sqrt(20000 * p * (1 - p))
    counts = np.bincount(got, minlength=11)[unseen]
    assert np.all(np.abs(counts - 20000 * p) < 5 * sd), (u, counts)
