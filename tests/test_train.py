"""End to end on real ML-100K: fit, results.json, kill-and-resume, eval-only, workdir reuse.

One small HSTU run (D = 32, 1 block, max_seq_len 50, 5 epochs) is trained in-process and shared
by the tests of this module; the kill-and-resume test repeats it through the command line.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax import metrics
from genrec_jax.models.sequential import build_model
from genrec_jax.train import trainer
from genrec_jax.train.checkpoint import Checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 5
# Unpacked batches have one shape, so each process compiles the train step once.
OVERRIDES = {"seed": 42, "data.pack": False, "train.num_epochs": EPOCHS}
METRIC_KEYS = {"hr@1", "hr@5", "hr@10", "hr@50", "hr@200", "ndcg@5", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"}
RESULT_KEYS = {"experiment", "dataset", "protocol", "best_epoch", "epochs_run", "wall_time_s", "val", "test"}
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  """Environment of the command-line runs: a JAX compilation cache shared by them (and only
  them), so the second and later processes skip recompiling the same programs."""
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(
      os.environ,
      JAX_COMPILATION_CACHE_DIR=str(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      PYTHONUNBUFFERED="1",
      # One JAX device, like the in-process runs these are compared with bit for bit (the CLI
      # otherwise splits the CPU into 2 devices; test_two_host_devices_match_one covers that).
      GENREC_HOST_DEVICES="1",
  )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ml100k_config, ml100k_task):
  """An uninterrupted in-process run of trainer.fit."""
  wd = tmp_path_factory.mktemp("fit")
  cfg = ml100k_config(**OVERRIDES)
  results = trainer.fit(cfg, ml100k_task, str(wd))
  return types.SimpleNamespace(cfg=cfg, wd=wd, results=results)


def _records(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:  # a line being written right now
      pass
  return out


def _epoch_records(workdir):
  """What must not depend on interruptions: everything but the wall-clock times."""
  return [{k: r[k] for k in ("epoch", "step", "train_loss", "val")} for r in _records(workdir)]


def _cli(workdir, data_dir, flags, *extra):
  return [sys.executable, "-m", "experiments.hstu_movielens", "--workdir", str(workdir),
          "--data_dir", str(data_dir), *flags, *extra]


def _run_cli(cmd, env, log: pathlib.Path) -> str:
  with log.open("w") as f:
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=SUBPROCESS_TIMEOUT_S
    )
  out = log.read_text()
  assert proc.returncode == 0, out[-3000:]
  return out


def popularity_metrics(task, examples) -> dict[str, float]:
  """Rank every candidate by how often it occurs in the training sequences (history excluded),
  with the same ranking code as the trainer."""
  tr = task.split.train
  counts = np.zeros(task.num_items)
  for r in range(len(tr)):
    ln = tr.length_U[r]
    if ln:
      np.add.at(counts, tr.ids_UxN[r, :ln], 1)
      counts[tr.targets_UxN[r, ln - 1]] += 1
  candidates = np.zeros(task.num_items, bool)
  candidates[task.catalog] = True
  rows = np.arange(len(examples))
  targets = examples.targets_UxN[rows, examples.length_U - 1]
  ranks = metrics.target_ranks(
      jnp.ones((len(examples), 1)), jnp.asarray(targets), jnp.asarray(examples.ids_UxN),
      jnp.asarray(counts[:, None], jnp.float32), jnp.asarray(candidates),
  )
  return metrics.metrics_from_ranks(np.asarray(ranks))


def _restore_params(cfg, task, workdir):
  model = build_model(cfg, task.num_items)
  tx = trainer.make_optimizer(cfg)
  target = trainer.init_state(model, tx, cfg, jax.random.key(0))
  ckpt = Checkpoints(workdir)
  state, meta = ckpt.restore("latest", target)
  ckpt.close()
  return jax.tree_util.tree_map(np.asarray, state), meta


# ------------------------------------------------------------------------------------------


def test_fit_learns_well_above_popularity(finished, ml100k_task):
  pop = popularity_metrics(ml100k_task, ml100k_task.split.val)
  assert 0.01 < pop["ndcg@10"] < 0.05  # sanity of the baseline itself (~0.026 on ML-100K)
  val = finished.results["val"]
  assert val["ndcg@10"] > 1.5 * pop["ndcg@10"], (val, pop)
  assert val["hr@10"] > 1.5 * pop["hr@10"], (val, pop)
  history = _records(finished.wd)
  assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
  losses = [r["train_loss"] for r in history]
  assert losses[-1] < losses[0] - 1.0
  # the best epoch is the arg-max of validation NDCG@10, and results.json re-evaluates it
  ndcg = [r["val"]["ndcg@10"] for r in history]
  assert finished.results["best_epoch"] == 1 + int(np.argmax(ndcg))
  logged = history[finished.results["best_epoch"] - 1]["val"]
  for k in METRIC_KEYS:
    assert finished.results["val"][k] == pytest.approx(logged[k], abs=1e-12), k


def test_results_json(finished):
  results = json.loads((finished.wd / "results.json").read_text())
  assert RESULT_KEYS <= set(results)
  assert results["experiment"] == "hstu_movielens"
  assert results["dataset"] == "ml-100k"
  assert results["protocol"] == "loo"
  assert results["epochs_run"] == EPOCHS
  assert 1 <= results["best_epoch"] <= EPOCHS
  assert results["wall_time_s"] > 0
  for split in ("val", "test"):
    m = results[split]
    assert set(m) - {"num_users"} == METRIC_KEYS, split
    assert m["num_users"] == 943
    assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS)
    assert m["hr@1"] <= m["hr@5"] <= m["hr@10"] <= m["hr@50"] <= m["hr@200"]
    assert m["ndcg@10"] <= m["ndcg@50"] <= m["ndcg@200"]
    assert m["ndcg@10"] <= m["hr@10"] and m["hr@1"] <= m["mrr"]
  assert results["val"] == finished.results["val"] and results["test"] == finished.results["test"]


def test_fit_twice_in_same_workdir_without_resume_raises(finished, ml100k_task):
  before = (finished.wd / "metrics.jsonl").read_text()
  with pytest.raises(FileExistsError, match="resume"):
    trainer.fit(finished.cfg, ml100k_task, str(finished.wd))
  assert (finished.wd / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("flag, message", [
    ("--config.model.name=gru", "unknown model 'gru'"),
    ("--config.loss.name=bpr", "unknown loss 'bpr'"),
    ("--config.data.dataset=ml-5m", "unknown dataset 'ml-5m'"),
    ("--config.model.positions=middle", "unknown model.positions 'middle'"),
])
def test_cli_bad_config_one_error_line_nothing_written(data_dir, ml100k_flags, cli_env, tmp_path, flag, message):
  wd = tmp_path / "run"
  proc = subprocess.run(_cli(wd, data_dir, ml100k_flags(), flag), cwd=REPO, env=cli_env,
                        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not wd.exists()


def test_kill_and_resume_matches_uninterrupted_run(
    finished, data_dir, ml100k_flags, ml100k_task, cli_env, tmp_path
):
  wd = tmp_path / "run"
  cmd = _cli(wd, data_dir, ml100k_flags(**OVERRIDES))
  log = tmp_path / "killed.log"
  with log.open("w") as f:
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env, stdout=f, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + SUBPROCESS_TIMEOUT_S
      while not any(r["epoch"] == 2 for r in _records(wd)):
        assert proc.poll() is None, "the run ended before epoch 2:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "no epoch-2 record in time:\n" + log.read_text()[-3000:]
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
    finally:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (wd / "results.json").exists()

  out = _run_cli(cmd + ["--resume"], cli_env, tmp_path / "resumed.log")
  assert "resumed from epoch" in out

  # metrics.jsonl: one record per epoch, equal to the uninterrupted run's
  assert _epoch_records(wd) == _epoch_records(finished.wd)
  # final parameters and optimizer state
  got, got_meta = _restore_params(finished.cfg, ml100k_task, wd)
  want, want_meta = _restore_params(finished.cfg, ml100k_task, finished.wd)
  assert got_meta["epoch"] == want_meta["epoch"] == EPOCHS
  assert got_meta["best_epoch"] == want_meta["best_epoch"]
  flat_got, tree_got = jax.tree_util.tree_flatten(got)
  flat_want, tree_want = jax.tree_util.tree_flatten(want)
  assert tree_got == tree_want
  for a, b in zip(flat_got, flat_want):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  resumed = json.loads((wd / "results.json").read_text())
  assert resumed["test"] == finished.results["test"]
  assert resumed["epochs_run"] == EPOCHS


def test_eval_only_reproduces_test_metrics(finished, data_dir, ml100k_flags, cli_env, tmp_path):
  results = json.loads((finished.wd / "results.json").read_text())
  cmd = _cli(finished.wd, data_dir, ml100k_flags(**OVERRIDES), "--eval_only")
  _run_cli(cmd, cli_env, tmp_path / "eval.log")
  out = json.loads((finished.wd / "eval.json").read_text())
  assert out["epoch"] == results["best_epoch"]
  for split in ("val", "test"):
    for k in METRIC_KEYS:
      assert out[split][k] == pytest.approx(results[split][k], rel=1e-9, abs=1e-12), (split, k)


def test_two_host_devices_match_one(finished, data_dir, ml100k_flags, cli_env, tmp_path):
  """The CLI's default on a 2+-core CPU: the step runs data-parallel over 2 host devices. Same
  batches, dropout masks and negatives, so the same epoch up to float summation order."""
  wd = tmp_path / "run"
  env = dict(cli_env, GENREC_HOST_DEVICES="2")
  _run_cli(_cli(wd, data_dir, ml100k_flags(**{**OVERRIDES, "train.num_epochs": 2})), env, tmp_path / "two.log")
  got, want = _epoch_records(wd), _epoch_records(finished.wd)[:2]
  for g, w in zip(got, want, strict=True):
    assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
    for k in METRIC_KEYS:
      assert g["val"][k] == pytest.approx(w["val"][k], abs=2e-3), k


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_host_device_count_is_one_error_line(data_dir, ml100k_flags, cli_env, tmp_path, value):
  wd = tmp_path / "run"
  proc = subprocess.run(_cli(wd, data_dir, ml100k_flags()), cwd=REPO, env=dict(cli_env, GENREC_HOST_DEVICES=value),
                        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
  assert proc.returncode == 2
  assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
      f"error: GENREC_HOST_DEVICES must be a positive integer, got {value!r}"
  ]
  assert not wd.exists()


def test_cold_start_run_reports_cold_and_warm_test_users(data_dir, ml100k_config, tmp_path):
  """data.cold_start_frac: held-out items never reach training; the test users are reported
  twice more, split by whether their target is one of them."""
  from genrec_jax.data.registry import load_task

  cfg = ml100k_config(**{"data.cold_start_frac": 0.1, "train.num_epochs": 1})
  task = load_task(cfg, str(data_dir))
  cold = np.setdiff1d(task.catalog, task.train_catalog)
  assert len(cold) == round(0.1 * len(task.catalog))
  assert not np.isin(task.split.train.ids_UxN, cold).any()
  results = trainer.fit(cfg, task, str(tmp_path / "run"))
  n_cold, n_warm = results["test_cold"]["num_users"], results["test_warm"]["num_users"]
  assert n_cold > 0 and n_cold + n_warm == results["test"]["num_users"]
  assert set(results["test_cold"]) == set(results["test"])
