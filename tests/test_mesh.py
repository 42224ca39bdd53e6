"""Device mesh ('data', 'model'), partition rules and the row-sharded item table (train/mesh.py,
genrec_jax/sharded.py).

The multi-device checks run in a subprocess of this file with 8 host CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8; JAX reads it at import): on meshes (8, 1),
(4, 2), (2, 4) and (1, 8) the loss, its gradients and the full-ranking ranks equal those of one
device, top-k over the sharded table equals jax.lax.top_k over the whole one, and a few training
steps on real ML-100K on a (4, 2) mesh follow the 1-device run (and survive an Orbax round trip
with the table still sharded). Tolerances: loss rel 1e-5, gradients 1e-5 relative to each param's
largest gradient, ranks and top-k ids exactly equal; after 6 ML-100K steps params atol 1e-5,
losses rel 1e-5, validation metrics abs 2e-3.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (the 8-device subprocess), not only by pytest
  sys.path.insert(0, str(REPO))

from genrec_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
from genrec_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))
TIMEOUT_S = 900  # generous: CPU time is ~1 min in all, but a loaded machine stretches wall time


def _cfg(data=-1, model=1, rules=mesh_lib.DEFAULT_RULES, **model_fields) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict({
      "mesh": {"data": data, "model": model, "rules": rules},
      "model": {"name": "hstu", "item_features": "id", **model_fields},
      "loss": {"name": "sampled_softmax"},
  })
  return cfg


# ---------------------------------------------------------------- config (in-process, no devices)


def test_mesh_shape_from_config():
  assert mesh_lib.mesh_shape(_cfg(), 8) == (8, 1)
  assert mesh_lib.mesh_shape(_cfg(model=2), 8) == (4, 2)
  assert mesh_lib.mesh_shape(_cfg(data=2, model=4), 8) == (2, 4)
  assert mesh_lib.mesh_shape(None, 3) == (3, 1)


@pytest.mark.parametrize("data, model, message", [
    (-1, 3, "mesh.model=3 must be a positive divisor"),
    (-1, 0, "mesh.model=0 must be a positive divisor"),
    (2, 2, "must equal the 8 devices"),
    (16, 1, "must equal the 8 devices"),
])
def test_bad_mesh_shape_is_config_error(data, model, message):
  with pytest.raises(ConfigError, match=message):
    mesh_lib.mesh_shape(_cfg(data, model), 8)


def test_rules_validation():
  with pytest.raises(ConfigError, match="can only be split over 'model'"):
    mesh_lib.rules_of(_cfg(rules=(("vocab", "data"),)))
  with pytest.raises(ConfigError, match="not \\(logical name"):
    mesh_lib.rules_of(_cfg(rules=(("vocab", "tensor"),)))


def test_sharded_table_needs_id_features_and_a_softmax_loss():
  mesh_lib.check_sharded_model(_cfg(model=2))
  with pytest.raises(ConfigError, match="item_features='id'"):
    mesh_lib.check_sharded_model(_cfg(model=2, item_features="text"))
  bad = _cfg(model=2)
  bad.loss.name = "infonce"
  with pytest.raises(ConfigError, match="no row-sharded implementation"):
    mesh_lib.check_sharded_model(bad)


def test_logical_specs_cover_params_and_adam_moments():
  from jax.sharding import PartitionSpec as P

  state = {"params": {"item_emb": np.zeros((8, 4)), "pos_emb": np.zeros((5, 4))},
           "opt_state": ({"mu": {"item_emb": np.zeros((8, 4))}, "count": np.zeros(())},),
           "step": np.zeros(())}
  specs = mesh_lib.logical_specs(state, {"item_emb": ("vocab", "embed")})
  assert specs["params"]["item_emb"] == P("vocab", "embed")
  assert specs["opt_state"][0]["mu"]["item_emb"] == P("vocab", "embed")
  assert specs["params"]["pos_emb"] == P() and specs["step"] == P()
  assert specs["opt_state"][0]["count"] == P()


# ---------------------------------------------------------------- 8 host devices (subprocess)


def _run(check: str, *args: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, __file__, check, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loss_grads_and_ranks_on_every_mesh_equal_one_device():
  out = _run("equivalence")
  for loss in ("sampled_softmax", "full_softmax"):
    assert set(out[loss]) == {f"{d}x{m}" for d, m in MESHES}
    for name, r in out[loss].items():
      assert r["loss_rel"] < 1e-5, (loss, name, r)
      assert r["grad_max_rel"] < 1e-5, (loss, name, r)
      if not name.endswith("x1"):  # row-sharded: no collective moves whole-table arrays
        assert r["whole_table_collectives"] == 0, (loss, name, r)
      assert r["rank_mismatches"] == 0 and r["num_ranks"] == 32, (name, r)
  assert out["control_whole_table_collectives"] > 0
  # the table really is split: each device of a (2, 4) mesh holds a quarter of its rows
  assert out["shard_rows"]["2x4"] == out["rows"] // 4 and out["shard_rows"]["8x1"] == out["rows"]


def test_top_k_on_sharded_table_equals_lax_top_k():
  out = _run("top_k")
  for name, r in out.items():
    assert r["ids_equal"], (name, r)
    assert r["score_max_abs"] < 1e-6, (name, r)
    assert r["excluded_returned"] == 0, (name, r)


def test_ml100k_steps_on_4x2_mesh_match_one_device(data_dir, tmp_path):
  out = _run("train", str(data_dir), str(tmp_path))
  ref, got = out["1x1"], out["4x2"]
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
  assert got["losses"][-1] < got["losses"][0]
  assert out["param_max_abs"] < 1e-5
  from jax.sharding import PartitionSpec as P

  assert got["table_spec"] == repr(P("model", None))
  for k, v in ref["val"].items():
    assert got["val"][k] == pytest.approx(v, abs=2e-3), k
  # Orbax round trip of the sharded state: same values, restored into the target's shardings
  assert out["restored_equal"] and out["restored_spec"] == repr(P("model", None))


# ---------------------------------------------------------------- the subprocess side


def _tiny_task():
  from genrec_jax.data.sequences import group_by_user, make_split
  from genrec_jax.train import trainer

  rng = np.random.default_rng(0)
  users, items, stamps = [], [], []
  for u in range(1, 33):
    n = int(rng.integers(4, 11))
    users += [u] * n
    items += rng.integers(1, 38, n).tolist()
    stamps += np.sort(rng.integers(10**9, 10**9 + 10**6, n)).tolist()
  catalog = np.array([i for i in range(1, 38) if i % 9])  # some ids are not candidates
  seqs = group_by_user(np.array(users), np.array(items), np.array(stamps), catalog=np.arange(1, 38))
  return trainer.Task(split=make_split(seqs, "loo", 8), catalog=catalog, num_items=seqs.num_embeddings)


def _tiny_config(loss: str):
  from experiments.hstu_movielens import get_config

  cfg = get_config()
  cfg.data.max_seq_len, cfg.data.pack = 8, False
  cfg.model.update(embed_dim=8, dqk=8, dv=8, num_blocks=1)
  cfg.loss.update(name=loss, num_negatives=16)
  cfg.train.update(batch_size=8, eval_batch_size=32)  # the 32 validation users in one batch
  return cfg


def _mesh(cfg, shape):
  import jax

  cfg.mesh.data, cfg.mesh.model = shape
  return mesh_lib.build_mesh(cfg, jax.devices()[: shape[0] * shape[1]])


COLLECTIVES = (" all-gather", " all-reduce", " all-to-all", " collective-permute", " reduce-scatter")


def _whole_table_collectives(compiled_text: str, sizes: tuple[int, ...]) -> int:
  """Collectives of a compiled program that produce an array with a dimension of `sizes` (the
  table's rows, the catalog size): how GSPMD moves a whole row-sharded table (e.g. a masked
  gather of all rows, all-reduced)."""
  count = 0
  for line in compiled_text.splitlines():
    for op in COLLECTIVES:
      head, sep, _ = line.partition(op)
      if sep and any(f"f32[{n}," in head for n in sizes):
        count += 1
        break
  return count


def _check_equivalence() -> dict:
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from genrec_jax import losses as losses_lib
  from genrec_jax.data import pipeline
  from genrec_jax.models.sequential import build_model
  from genrec_jax.train import trainer

  task = _tiny_task()
  rows = 40  # the table rows (38 ids, padded to a multiple of 8): the same init on every mesh
  losses = ("sampled_softmax", "full_softmax")
  out: dict = {"rows": rows, "shard_rows": {}}
  batch_np = pipeline.train_batch(task.split.train, 8, 0, False, 0)
  results = {}
  params_host = None
  for shape in ((1, 1), *MESHES):
    cfgs = {loss: _tiny_config(loss) for loss in losses}
    mesh = _mesh(cfgs[losses[0]], shape)
    _mesh(cfgs[losses[1]], shape)
    model, tx = build_model(cfgs[losses[0]], rows), trainer.make_optimizer(cfgs[losses[0]])
    if params_host is None:  # init_state on a sharded mesh is covered by the ML-100K check
      state = trainer.init_state(model, tx, cfgs[losses[0]], jax.random.key(0), mesh)
      params_host = jax.tree_util.tree_map(np.asarray, state["params"])
    shardings = trainer.state_shardings(model, tx, cfgs[losses[0]], mesh)
    state = {"params": jax.device_put(params_host, shardings["params"])}
    catalog = jnp.asarray(task.catalog, jnp.int32)
    loss_fns = [trainer.make_loss_fn(model, cfgs[loss], catalog, mesh) for loss in losses]
    rank_fn = trainer.make_rank_fn(model, task.catalog, rows, mesh, cfgs[losses[0]])
    (eval_batch, n_users), = trainer.eval_batches(task.split.val, cfgs[losses[0]], mesh)

    def everything(params, batch, key, eval_batch):  # one program per mesh: one compile
      return [jax.value_and_grad(f)(params, batch, key) for f in loss_fns], rank_fn(params, eval_batch)

    args = (state["params"], trainer.to_device(batch_np, mesh), jax.random.key(1), eval_batch)
    compiled = jax.jit(everything).lower(*args).compile()
    per_loss, ranks = compiled(*args)
    sizes = (rows, len(task.catalog))
    results[shape] = ([(float(v), jax.tree_util.tree_map(np.asarray, g)) for v, g in per_loss],
                      np.asarray(ranks)[:n_users], _whole_table_collectives(compiled.as_text(), sizes))
    out["shard_rows"][f"{shape[0]}x{shape[1]}"] = state["params"]["item_emb"].addressable_shards[0].data.shape[0]
  ref = results[(1, 1)]
  for i, loss in enumerate(losses):
    out[loss] = {}
    for shape in MESHES:
      (value, grads), ranks, gathers = results[shape][0][i], results[shape][1], results[shape][2]
      ref_value, ref_grads = ref[0][i]
      rel = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)),
                                   grads, ref_grads)
      out[loss][f"{shape[0]}x{shape[1]}"] = {
          "loss_rel": abs(value - ref_value) / abs(ref_value),
          "grad_max_rel": max(jax.tree_util.tree_leaves(rel)),  # per param: max |diff| / max |grad|
          "rank_mismatches": int(np.sum(ranks != ref[1])),
          "num_ranks": len(ranks),
          "whole_table_collectives": gathers,
      }
  # the control: the unsharded dense loss on the same (4, 2)-sharded table, left to GSPMD, does
  # move whole-table arrays (so the count above can see them)
  mesh = _mesh(_tiny_config("sampled_softmax"), (4, 2))
  table = jax.device_put(jnp.ones((rows, 8)), NamedSharding(mesh, P("model", None)))
  user = jax.device_put(jnp.ones((8, 8, 8)), NamedSharding(mesh, P("data")))
  targets = jax.device_put(jnp.ones((8, 8), jnp.int32), NamedSharding(mesh, P("data")))
  offs = jax.device_put(jnp.zeros((8, 8, 16), jnp.int32), NamedSharding(mesh, P("data")))
  catalog = jnp.asarray(task.catalog, jnp.int32)
  control = jax.jit(jax.grad(lambda t, u, y, o: losses_lib.sampled_softmax_loss(
      u, y, t, catalog, o, 0.05, impl="dense"))).lower(table, user, targets, offs).compile()
  out["control_whole_table_collectives"] = _whole_table_collectives(control.as_text(), sizes)
  return out


def _check_top_k() -> dict:
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from genrec_jax import sharded

  rng = np.random.default_rng(3)
  v, d, b, k = 64, 16, 8, 10
  table = rng.normal(size=(v, d)).astype(np.float32)
  table /= np.linalg.norm(table, axis=-1, keepdims=True)
  user = rng.normal(size=(b, d)).astype(np.float32)
  candidate = np.ones(v, bool)
  candidate[[0, 5, 17, 40]] = False  # padding row and items outside the catalog
  history = rng.integers(1, v, (b, 6)).astype(np.int32)
  # reference: jax.lax.top_k over every score, excluded items at -inf
  scores = user @ table.T
  excluded = ~candidate[None, :] | (np.arange(v)[None, :, None] == history[:, None, :]).any(-1)
  want_s, want_i = jax.lax.top_k(jnp.where(excluded, -jnp.inf, scores), k)
  out = {}
  for shape in MESHES:
    cfg = _cfg(*shape)
    mesh = _mesh(cfg, shape)
    table_dev = jax.device_put(table, NamedSharding(mesh, P("model", None)))
    cand_dev = jax.device_put(candidate, NamedSharding(mesh, P("model")))
    got_s, got_i = jax.jit(lambda t, c: sharded.top_k(user, t, c, history, k, mesh))(table_dev, cand_dev)
    got_i = np.asarray(got_i)
    out[f"{shape[0]}x{shape[1]}"] = {
        "ids_equal": bool(np.array_equal(got_i, np.asarray(want_i))),
        "score_max_abs": float(np.max(np.abs(np.asarray(got_s) - np.asarray(want_s)))),
        "excluded_returned": int(np.take_along_axis(excluded, got_i, axis=1).sum()),
    }
  return out


def _check_train(data_dir: str, tmp: str) -> dict:
  import jax
  import jax.numpy as jnp

  sys.path.insert(0, str(REPO / "tests"))
  from conftest import small_ml100k_config  # pylint: disable=g-import-not-at-top

  from genrec_jax.data import pipeline
  from genrec_jax.data.registry import load_task
  from genrec_jax.models.sequential import build_model
  from genrec_jax.train import trainer
  from genrec_jax.train.checkpoint import Checkpoints

  steps = 6
  base = small_ml100k_config(**{"data.pack": False, "train.eval_batch_size": 128})
  task = load_task(base, data_dir)
  rows = -(-task.num_items // 2) * 2  # 1684: the (4, 2) table's rows, used on 1 device too (same init)
  out: dict = {}
  finals = {}
  for shape in ((1, 1), (4, 2)):
    cfg = small_ml100k_config(**{"data.pack": False, "train.eval_batch_size": 128})
    mesh = _mesh(cfg, shape)
    if shape == (4, 2):
      assert mesh_lib.table_rows(task.num_items, cfg, mesh) == rows
    model, tx = build_model(cfg, rows), trainer.make_optimizer(cfg)
    state = trainer.init_state(model, tx, cfg, jax.random.key(cfg.seed), mesh)
    step = trainer.make_train_step(model, tx, cfg, jnp.asarray(task.catalog, jnp.int32), mesh)
    it = pipeline.train_iterator(task.split.train, cfg.train.batch_size, cfg.seed, steps)
    losses = []
    for _ in range(steps):
      state, loss = step(state, trainer.to_device(next(it), mesh))
      jax.block_until_ready(state)
      losses.append(float(loss))
    rank_fn = trainer.make_rank_fn(model, task.catalog, rows, mesh, cfg)
    val = trainer.evaluate(rank_fn, state["params"], trainer.eval_batches(task.split.val, cfg, mesh))
    name = f"{shape[0]}x{shape[1]}"
    out[name] = {"losses": losses, "val": val, "table_spec": repr(state["params"]["item_emb"].sharding.spec)}
    finals[name] = jax.tree_util.tree_map(np.asarray, state["params"])
    if shape == (4, 2):
      ckpt = Checkpoints(tmp)
      ckpt.save("latest", 1, state, {"epoch": 1})
      target = jax.device_put(jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), state),
                              trainer.state_shardings(model, tx, cfg, mesh))
      restored, _ = ckpt.restore("latest", target)
      ckpt.close()
      same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), restored, state)
      out["restored_equal"] = all(jax.tree_util.tree_leaves(same))
      out["restored_spec"] = repr(restored["params"]["item_emb"].sharding.spec)
  diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), finals["4x2"], finals["1x1"])
  out["param_max_abs"] = max(jax.tree_util.tree_leaves(diffs))
  return out


def _collectives_of_train_step() -> dict:
  """Every collective of the compiled train step on a (4, 2) mesh (docs/scaling.md): [op, result
  type, replica groups]. Not a test; `python tests/test_mesh.py collectives`."""
  import re

  import jax
  import jax.numpy as jnp

  from genrec_jax.data import pipeline
  from genrec_jax.models.sequential import build_model
  from genrec_jax.train import trainer

  task, cfg = _tiny_task(), _tiny_config("sampled_softmax")
  mesh = _mesh(cfg, (4, 2))
  model, tx = build_model(cfg, 48), trainer.make_optimizer(cfg)
  state = trainer.init_state(model, tx, cfg, jax.random.key(0), mesh)
  step = trainer.make_train_step(model, tx, cfg, jnp.asarray(task.catalog, jnp.int32), mesh)
  batch = trainer.to_device(pipeline.train_batch(task.split.train, 8, 0, False, 0), mesh)
  found = []
  for line in step.lower(state, batch).compile().as_text().splitlines():
    m = re.search(r"= (.*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", line)
    if m:
      groups = re.search(r"replica_groups=(\S+?)(?:, use_global| \{|,\s*to_apply|$)", line)
      found.append([m.group(2), re.sub(r"\{[0-9,]*\}", "", m.group(1)), groups.group(1) if groups else ""])
  return {"collectives": found}


if __name__ == "__main__":
  checks = {"equivalence": _check_equivalence, "top_k": _check_top_k, "train": _check_train,
            "collectives": _collectives_of_train_step}
  print(json.dumps(checks[sys.argv[1]](*sys.argv[2:])))
