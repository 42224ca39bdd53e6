"""Multi-process runs (genrec_jax/distributed.py): sharded batches, 2 local processes, lost peers.

The end-to-end tests launch 2 processes of the experiment command on 127.0.0.1 (one CPU device
each, gloo collectives) and compare them with one process holding 2 CPU devices: the same mesh
size, the same global batches, so the same XLA computation split differently over processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from genrec_jax import distributed
from genrec_jax.config import ConfigError
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples

REPO = pathlib.Path(__file__).resolve().parents[1]
# Hard limit of the launched processes: a hang fails the test instead of stalling CI. Generous,
# because a loaded 2-core machine compiles slowly; an idle one needs ~1 min per test.
TIMEOUT_S = 600
METRIC_KEYS = ("hr@1", "hr@5", "hr@10", "hr@50", "hr@200", "ndcg@5", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")


# ------------------------------------------------------------------------------------------
# Sharded batches: the blocks of all processes, stacked, are the one-process batch
# ------------------------------------------------------------------------------------------


def _examples(num_users: int, n: int, seed: int) -> Examples:
  rng = np.random.default_rng(seed)
  length = rng.integers(1, n + 1, num_users).astype(np.int32)
  length[::7] = 0  # users without training tokens are never placed
  ids = np.zeros((num_users, n), np.int32)
  targets = np.zeros((num_users, n), np.int32)
  ts = np.zeros((num_users, n + 1), np.int64)
  for u, ln in enumerate(length):
    ids[u, :ln] = rng.integers(1, 500, ln)
    targets[u, :ln] = rng.integers(1, 500, ln)
    ts[u, : ln + 1] = np.sort(rng.integers(10**8, 10**9, ln + 1))
  return Examples(ids, ts, targets, length, np.arange(num_users, dtype=np.int64))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("count", [2, 4])
def test_train_batch_shards_stack_to_the_global_batch(packed, count):
  ex = _examples(101, 12, seed=0)
  mult = pipeline.row_multiple(count)
  for step in (0, 3, 6):  # 4 steps per epoch of 32: step 3 is the short last batch
    want = pipeline.train_batch(ex, 32, 7, packed, step, rows_multiple=mult)
    parts = [pipeline.train_batch(ex, 32, 7, packed, step, shard=(i, i + 1, count), rows_multiple=mult)
             for i in range(count)]
    assert len({len(p["ids"]) for p in parts}) == 1, "every process builds the same number of rows"
    for k in want:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k], err_msg=k)
    if packed:  # packing does pack: fewer rows than users
      assert len(want["ids"]) < 32 and len(want["ids"]) % mult == 0


def test_train_batch_with_shard_of_several_blocks():
  ex = _examples(64, 10, seed=1)
  want = pipeline.train_batch(ex, 32, 3, True, 1, rows_multiple=8)
  lo = pipeline.train_batch(ex, 32, 3, True, 1, shard=(0, 3, 4), rows_multiple=8)
  hi = pipeline.train_batch(ex, 32, 3, True, 1, shard=(3, 4, 4), rows_multiple=8)
  for k in want:
    np.testing.assert_array_equal(np.concatenate([lo[k], hi[k]]), want[k])


@pytest.mark.parametrize("packed", [False, True])
def test_eval_batch_shards_stack_to_the_global_batch(packed):
  ex = _examples(70, 9, seed=2)
  want = pipeline.eval_batches(ex, 32, packed=packed, row_multiple=8)
  parts = [pipeline.eval_batches(ex, 32, packed=packed, row_multiple=8, shard=(i, i + 1, 2)) for i in range(2)]
  assert len(want) == len(parts[0]) == 3
  for b, (batch, n) in enumerate(want):
    assert [p[b][1] for p in parts] == [n, n], "the number of real users is the whole batch's"
    for k in batch:
      np.testing.assert_array_equal(np.concatenate([p[b][0][k] for p in parts]), batch[k], err_msg=k)


def test_shard_rows_needs_equal_blocks():
  assert distributed.shard_rows(16, (1, 2, 2)) == (8, 16)
  assert distributed.shard_rows(16, None) == (0, 16)
  with pytest.raises(ValueError, match="equal blocks"):
    distributed.shard_rows(10, (0, 1, 4))


# ------------------------------------------------------------------------------------------
# Flags / environment
# ------------------------------------------------------------------------------------------


def test_process_group_from_flags_and_env(monkeypatch):
  for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(k, raising=False)
  assert not distributed.process_group().enabled
  g = distributed.process_group("10.0.0.1:1234", 4, 3)
  assert (g.coordinator_address, g.num_processes, g.process_id, g.enabled) == ("10.0.0.1:1234", 4, 3, True)
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "h:9")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
  g = distributed.process_group()
  assert (g.coordinator_address, g.num_processes, g.process_id) == ("h:9", 2, 1)
  assert distributed.process_group(process_id=0).process_id == 0, "flags win over the environment"
  auto = distributed.process_group("auto")  # JAX auto-detects (TPU, SLURM)
  assert auto.enabled and auto.coordinator_address is None


@pytest.mark.parametrize(
    "args, message",
    [(("h:1", 2, None), "needs --coordinator_address"), ((None, 2, 0), "needs --coordinator_address"),
     (("h:1", 2, 2), "process_id must be in"), (("h", 2, 0), "HOST:PORT")],
)
def test_bad_process_group_is_a_config_error(monkeypatch, args, message):
  for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ConfigError, match=message):
    distributed.process_group(*args)


# ------------------------------------------------------------------------------------------
# Two processes on 127.0.0.1
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return dict(
      os.environ,
      PYTHONUNBUFFERED="1",
      GENREC_HOST_DEVICES="1",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )


def _cmd(workdir, data_dir, flags, *extra):
  return [sys.executable, "-m", "experiments.hstu_movielens", "--workdir", str(workdir),
          "--data_dir", str(data_dir), *flags, *extra]


def _launch(cmd, env, logs: list[pathlib.Path], num: int = 2) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for i, log in enumerate(logs[:num]):
    flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num}", f"--process_id={i}"]
    with log.open("w") as f:
      procs.append(subprocess.Popen(cmd + flags, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
  return procs


def _wait_all(procs, deadline: float) -> list[int]:
  try:
    for p in procs:
      try:
        p.wait(timeout=max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        break  # killed below; the test sees -SIGKILL
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p in procs]


# 2 epochs of 4 steps (943 users, batches of 256), packed rows: the row count of a packed batch
# is computed by every process from all users' lengths, each fills its block of rows.
RUN = {"seed": 3, "train.batch_size": 256, "train.num_epochs": 2, "data.pack": True}


def test_two_processes_match_one_process(data_dir, ml100k_flags, env, tmp_path):
  """2 processes x 1 device = 1 process x 2 devices, same global batches: the same loss and
  metrics. Tolerance: 1e-6 relative on the loss, 1e-9 on metrics (observed: bit-identical)."""
  flags = ml100k_flags(**RUN)
  deadline = time.time() + TIMEOUT_S
  one = subprocess.Popen(_cmd(tmp_path / "one", data_dir, flags), cwd=REPO,
                         env=dict(env, GENREC_HOST_DEVICES="2"), stdout=subprocess.DEVNULL,
                         stderr=(tmp_path / "one.log").open("w"))
  logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
  procs = _launch(_cmd(tmp_path / "two", data_dir, flags), env, logs)
  codes = _wait_all([one, *procs], deadline)
  assert codes == [0, 0, 0], "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in [tmp_path / "one.log", *logs])

  def records(wd):
    return [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]

  got, want = records(tmp_path / "two"), records(tmp_path / "one")
  assert [r["step"] for r in got] == [r["step"] for r in want] == [4, 8]
  for g, w in zip(got, want, strict=True):
    assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-6)
    assert g["val"]["num_users"] == w["val"]["num_users"] == 943
    for k in METRIC_KEYS:
      assert g["val"][k] == pytest.approx(w["val"][k], abs=1e-9), k
  res_got = json.loads((tmp_path / "two" / "results.json").read_text())
  res_want = json.loads((tmp_path / "one" / "results.json").read_text())
  for k in METRIC_KEYS:
    assert res_got["test"][k] == pytest.approx(res_want["test"][k], abs=1e-9), k

  # Only process 0 prints and writes; every process saved its data-iterator state.
  out0, out1 = (log.read_text() for log in logs)
  assert "epoch   2  loss" in out0 and "epoch   2  loss" not in out1
  assert "| ours (test) |" in out0 and "| ours (test) |" not in out1
  step_dir = tmp_path / "two" / "checkpoints" / "latest" / "2"
  assert sorted(p.name for p in (step_dir / "data").glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert (step_dir / "genrec_manifest.json").exists()


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_process_makes_the_other_exit_with_a_clear_error(victim, data_dir, ml100k_flags, env, tmp_path):
  """kill -9 of one process mid-training (after epoch 1, so the survivor is in its train steps):

  - the survivor's next collective fails at once (gloo: connection closed) and our handler
    (cli.py, distributed.describe_failure) exits with code 1 naming the lost process, or the
    coordinator if process 0 died;
  - or JAX's distributed client gets there first and aborts (SIGABRT, or SIGSEGV when Python's
    fault handler crashes during the abort): after the heartbeat
    timeout naming the dead task, or at once naming the lost leader (coordinator).
  Either way: a non-zero exit naming who was lost, within seconds, never a hang."""
  flags = ml100k_flags(**{**RUN, "train.num_epochs": 50})  # RUN's programs are in the compilation cache
  logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
  env = dict(env, GENREC_HEARTBEAT_TIMEOUT="30")  # bounds the wait if a peer dies outside a collective
  procs = _launch(_cmd(tmp_path / "run", data_dir, flags), env, logs)
  survivor = 1 - victim
  try:
    deadline = time.time() + TIMEOUT_S
    jsonl = tmp_path / "run" / "metrics.jsonl"
    while not (jsonl.exists() and jsonl.read_text().strip()):  # epoch 1's record is written
      assert all(p.poll() is None for p in procs), "\n".join(log.read_text()[-2000:] for log in logs)
      assert time.time() < deadline, "epoch 1 did not end in time:\n" + logs[0].read_text()[-2000:]
      time.sleep(0.2)
    time.sleep(1.0)
    procs[victim].send_signal(signal.SIGKILL)
    t_kill = time.time()
    code = _wait_all([procs[survivor]], t_kill + 120)
  finally:
    _wait_all(procs, time.time() + 5)
  out = logs[survivor].read_text()
  assert code[0] != 0, out[-2000:]
  assert code[0] != -signal.SIGKILL, "the survivor hung: killed by the test 120 s after its peer"
  ours = code[0] == 1 and "error: process" in out
  # JAX's abort sometimes ends in SIGSEGV instead: Python's fault handler crashes while dumping
  # the threads of the aborting process (seen in CI); the message naming the loss is printed first.
  jax_abort = (code[0] in (-signal.SIGABRT, -signal.SIGSEGV)
               and "Terminating process because the JAX distributed service" in out)
  assert ours or jax_abort, f"exit code {code[0]}\n" + out[-3000:]
  if victim == 1:
    assert ("lost process(es) [1]" in out if ours else
            re.search(r"stopped sending heartbeats\):\s*1\b", out)), out[-3000:]
  else:
    assert ("lost the coordinator (process 0" in out if ours else "leader task" in out), out[-3000:]
