"""Checkpoints (genrec_jax/train/checkpoint.py): round trip, exact continuation, corruption, and
resuming trainer.fit after a kill at the awkward moments of an epoch's saves (tiny synthetic task)."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.hstu_movielens import get_config
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import group_by_user, make_split
from genrec_jax.models.sequential import build_model
from genrec_jax.train import trainer
from genrec_jax.train.checkpoint import MANIFEST, Checkpoints, CorruptCheckpointError

MODEL_KEYS = ("ids", "targets", "ts_key", "ts_query", "pos", "seg")


def tiny_task(seed: int = 0, protocol: str = "loo") -> trainer.Task:
  rng = np.random.default_rng(seed)
  users, items, stamps = [], [], []
  for u in range(1, 41):
    n = int(rng.integers(4, 13))
    users += [u] * n
    items += rng.integers(1, 31, n).tolist()
    stamps += np.sort(rng.integers(10**9, 10**9 + 10**6, n)).tolist()
  seqs = group_by_user(np.array(users), np.array(items), np.array(stamps), catalog=np.arange(1, 31))
  return trainer.Task(split=make_split(seqs, protocol, 8), catalog=seqs.catalog, num_items=seqs.num_embeddings)


def tiny_config(**train):
  cfg = get_config()
  cfg.seed = 42
  cfg.data.max_seq_len = 8
  cfg.data.pack = False
  cfg.model.embed_dim = 8
  cfg.model.dqk = 8
  cfg.model.dv = 8
  cfg.model.num_blocks = 1
  cfg.loss.num_negatives = 16
  cfg.train.batch_size = 8
  cfg.train.eval_batch_size = 16
  cfg.train.num_epochs = 2
  cfg.train.update(train)
  return cfg


class Setup:
  def __init__(self, cfg, task):
    self.cfg, self.task = cfg, task
    self.mesh = trainer.make_mesh()
    self.model = build_model(cfg, task.num_items)
    self.tx = trainer.make_optimizer(cfg)
    catalog = jnp.asarray(task.catalog, jnp.int32)
    self.step = trainer.make_train_step(self.model, self.tx, cfg, catalog, self.mesh)
    self.total_steps = pipeline.steps_per_epoch(len(task.split.train), cfg.train.batch_size) * 3
    self.replicated = NamedSharding(self.mesh, P())
    # jitted: one compile instead of many op-by-op ones
    self._init = jax.jit(lambda key: trainer.init_state(self.model, self.tx, cfg, key))

  def state(self, seed):
    return jax.device_put(self._init(jax.random.key(seed)), self.replicated)

  def iterator(self):
    cfg = self.cfg
    return pipeline.train_iterator(self.task.split.train, cfg.train.batch_size, cfg.seed, self.total_steps)

  def run(self, state, it, steps):
    state = jax.device_put(state, self.replicated)  # as trainer.fit does; avoids a recompile
    losses = []
    for _ in range(steps):
      state, loss = self.step(state, trainer.to_device(next(it), self.mesh))
      losses.append(float(loss))
    return state, losses


def _host(tree):
  return jax.tree_util.tree_map(lambda a: np.array(a), tree)


def _assert_trees_equal(a, b):
  la, ta = jax.tree_util.tree_flatten(_host(a))
  lb, tb = jax.tree_util.tree_flatten(_host(b))
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def setup():
  return Setup(tiny_config(), tiny_task())


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
  """A `latest` checkpoint after 3 steps, the state it holds, and the next 3 losses/params."""
  wd = tmp_path_factory.mktemp("ckpt")
  it = setup.iterator()
  state, _ = setup.run(setup.state(setup.cfg.seed), it, 3)
  snapshot = _host(state)
  meta = {"epoch": 1, "best_epoch": 1, "best_metric": 0.25, "wall_time_s": 1.5}
  ckpt = Checkpoints(wd)
  ckpt.save("latest", 1, state, meta, it)
  ckpt.close()
  state, losses = setup.run(state, it, 3)  # the uninterrupted continuation
  return {"workdir": wd, "state": snapshot, "meta": meta, "next_losses": losses, "next_params": _host(state["params"])}


def test_restore_gives_identical_state_meta_and_continuation(setup, saved):
  target = setup.state(seed=1234)  # different values: restore must overwrite them all
  it = setup.iterator()
  ckpt = Checkpoints(saved["workdir"])
  assert ckpt.latest_step("latest") == 1 and ckpt.latest_step("best") is None
  state, meta = ckpt.restore("latest", target, it)
  ckpt.close()
  assert meta == saved["meta"]
  _assert_trees_equal(state, saved["state"])
  assert int(state["step"]) == 3
  # training continues exactly (same losses, same params) as without the save/restore
  state, losses = setup.run(state, it, 3)
  assert losses == saved["next_losses"]
  _assert_trees_equal(state["params"], saved["next_params"])


def test_restore_resumes_the_grain_iterator(setup, saved):
  it = setup.iterator()
  Checkpoints(saved["workdir"]).restore("latest", setup.state(0), it)
  for k in (3, 4, 5):
    want = pipeline.train_batch(setup.task.split.train, 8, setup.cfg.seed, False, k)
    got = next(it)
    for key in MODEL_KEYS:
      np.testing.assert_array_equal(got[key], want[key])


def test_restore_without_checkpoint(tmp_path, setup):
  with pytest.raises(FileNotFoundError):
    Checkpoints(tmp_path).restore("latest", setup.state(0))


def _step_dir(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / "checkpoints" / "latest" / "1"


@pytest.fixture
def copy(saved, tmp_path):
  wd = tmp_path / "run"
  shutil.copytree(saved["workdir"], wd)
  return wd


def _data_files(step_dir):
  return sorted(f for f in step_dir.rglob("*") if f.is_file() and f.name != MANIFEST)


def test_manifest_lists_every_file(copy):
  manifest = json.loads((_step_dir(copy) / MANIFEST).read_text())
  assert sorted(manifest) == sorted(str(f.relative_to(_step_dir(copy))) for f in _data_files(_step_dir(copy)))
  assert any(k.startswith("state") for k in manifest) and any(k.startswith("data") for k in manifest)


def test_flipped_byte_in_any_file_is_detected(setup, copy):
  files = _data_files(_step_dir(copy))
  assert len(files) >= 3
  for f in files:
    data = bytearray(f.read_bytes())
    if not data:
      continue
    original = bytes(data)
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
      Checkpoints(copy).restore("latest", setup.state(0), setup.iterator())
    f.write_bytes(original)
  # intact again: restores fine
  state, _ = Checkpoints(copy).restore("latest", setup.state(0), setup.iterator())
  assert int(state["step"]) == 3


def test_truncated_file_is_detected(setup, copy):
  biggest = max(_data_files(_step_dir(copy)), key=lambda f: f.stat().st_size)
  data = biggest.read_bytes()
  biggest.write_bytes(data[: len(data) // 2])
  with pytest.raises(CorruptCheckpointError):
    Checkpoints(copy).restore("latest", setup.state(0))


def test_missing_file_or_manifest_is_detected(setup, copy):
  f = max(_data_files(_step_dir(copy)), key=lambda f: f.stat().st_size)
  f.unlink()
  with pytest.raises(CorruptCheckpointError):
    Checkpoints(copy).restore("latest", setup.state(0))
  (_step_dir(copy) / MANIFEST).unlink()
  with pytest.raises(CorruptCheckpointError, match="incomplete"):
    Checkpoints(copy).restore("latest", setup.state(0))


def test_save_keeps_two_latest_steps_and_one_best(setup, tmp_path):
  ckpt = Checkpoints(tmp_path)
  state = setup.state(0)
  for epoch in (1, 2, 3):
    ckpt.save("latest", epoch, state, {"epoch": epoch})
  ckpt.save("best", 2, state, {"epoch": 2})
  assert ckpt.latest_step("latest") == 3 and ckpt.latest_step("best") == 2
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit()) == ["2", "3"]
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "best").iterdir() if p.name.isdigit()) == ["2"]
  _, meta = ckpt.restore("latest", setup.state(1))
  assert meta == {"epoch": 3}
  ckpt.close()


def test_resume_after_crash_between_best_and_latest_saves(tmp_path, monkeypatch):
  """A run killed after saving `best` for epoch e but before saving `latest` for epoch e resumes
  from epoch e - 1 and must be able to save `best` for epoch e again."""
  cfg = tiny_config(num_epochs=2)
  cfg.data.protocol = "paper"  # no validation split: `best` is saved every epoch
  task = tiny_task(protocol="paper")

  real_save = Checkpoints.save

  def crashing_save(self, which, step, *args, **kwargs):
    if which == "latest" and step == 2:
      raise KeyboardInterrupt("simulated kill")
    return real_save(self, which, step, *args, **kwargs)

  wd = str(tmp_path / "run")
  monkeypatch.setattr(Checkpoints, "save", crashing_save)
  with pytest.raises(KeyboardInterrupt):
    trainer.fit(cfg, task, wd)
  monkeypatch.setattr(Checkpoints, "save", real_save)
  got = trainer.fit(cfg, task, wd, resume=True)
  assert got["epochs_run"] == 2 and got["best_epoch"] == 2
  epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [1, 2]


def test_resume_after_kill_between_save_and_manifest(tmp_path, monkeypatch):
  """A kill after Orbax has committed `latest` but before the manifest is written leaves a step
  without a manifest; --resume falls back to the previous (verified) step and redoes the epoch."""
  from genrec_jax.train import checkpoint as checkpoint_lib

  cfg = tiny_config(num_epochs=2)
  task = tiny_task()
  real_write = checkpoint_lib._write_manifest

  def killed_write(step_dir):
    if step_dir.parent.name == "latest" and step_dir.name == "2":
      raise KeyboardInterrupt("simulated kill")
    return real_write(step_dir)

  wd = str(tmp_path / "run")
  monkeypatch.setattr(checkpoint_lib, "_write_manifest", killed_write)
  with pytest.raises(KeyboardInterrupt):
    trainer.fit(cfg, task, wd)
  monkeypatch.setattr(checkpoint_lib, "_write_manifest", real_write)
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "latest").iterdir() if p.name.isdigit()) == ["1", "2"]
  got = trainer.fit(cfg, task, wd, resume=True)
  assert got["epochs_run"] == 2
