"""train/loop.py on a toy state: refusal, kill-and-resume, best selection, early stopping,
eval_every, the printed lines and results.json."""

from __future__ import annotations

import json
import math
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from genrec_jax.train import loop

# The selection metric after each epoch (index = epoch): best at epoch 3, then worse.
SCORES = [None, 0.1, 0.3, 0.5, 0.4, 0.2, 0.45, 0.1]


def _state():
  return {"w": jnp.zeros((2,), jnp.float32), "step": jnp.zeros((), jnp.int32)}


def _train_epoch(state, epoch, kill_at=None):
  """Three 'steps' per epoch; w grows by the epoch number (so restored states are visible)."""
  if epoch == kill_at:
    raise KeyboardInterrupt("simulated kill")
  w = state["w"] + epoch
  return {"w": w, "step": state["step"] + 3}, {"train_loss": float(w.sum()), "extra": epoch * 10}


def _evaluate(state):
  return {"ndcg@10": SCORES[int(state["step"]) // 3], "rmse": 1.0 - SCORES[int(state["step"]) // 3]}


def _fit(workdir, num_epochs, resume=False, kill_at=None, patience=0, eval_every=1, split="val",
         metric="ndcg@10", larger=True, started_s_ago=0.0):
  sel = loop.Selection(split, metric, larger)
  run, state = loop.open_run(workdir, resume, _state(), sel, t_start=time.time() - started_s_ago)
  state = loop.epoch_loop(run, state, num_epochs, lambda s, e: _train_epoch(s, e, kill_at), _evaluate,
                          patience=patience, eval_every=eval_every)
  best_state, best_meta = run.restore_best(state)
  return run, state, best_state, best_meta


def _records(workdir):
  """The records without their wall-clock times."""
  return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in loop.RunLog(workdir).history()]


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
  run, state, best, meta = _fit(tmp_path / "whole", 5)
  with pytest.raises(KeyboardInterrupt):
    _fit(tmp_path / "cut", 5, kill_at=4)
  with pytest.raises(FileExistsError, match="resume"):  # a run is there: only --resume continues it
    _fit(tmp_path / "cut", 5)
  capsys.readouterr()
  run_r, state_r, best_r, meta_r = _fit(tmp_path / "cut", 5, resume=True)
  assert "resumed from epoch 3 (step 9)" in capsys.readouterr().out
  assert _records(tmp_path / "cut") == _records(tmp_path / "whole")
  assert [r["epoch"] for r in _records(tmp_path / "whole")] == [1, 2, 3, 4, 5]
  assert _records(tmp_path / "whole")[0] == {"epoch": 1, "step": 3, "train_loss": 2.0, "extra": 10,
                                             "val": {"ndcg@10": 0.1, "rmse": 0.9}}
  for got, want in ((state_r, state), (best_r, best)):
    np.testing.assert_array_equal(got["w"], want["w"])
  np.testing.assert_array_equal(best["w"], [6.0, 6.0])  # 1 + 2 + 3: the epoch-3 state
  keys = ("epoch", "best_epoch", "best_metric")  # of the `best` checkpoint, and at the end
  assert {k: meta_r[k] for k in keys} == {k: meta[k] for k in keys} == {"epoch": 3, "best_epoch": 3, "best_metric": 0.5}
  assert {k: run_r.meta[k] for k in keys} == {k: run.meta[k] for k in keys} == {"epoch": 5, "best_epoch": 3, "best_metric": 0.5}


def test_resume_drops_records_written_after_the_checkpoint(tmp_path):
  """A kill between the record of epoch e and its checkpoint: epoch e is redone, logged once."""
  wd = tmp_path / "run"
  _fit(wd, 2)
  with (wd / "metrics.jsonl").open("a") as f:  # as if epoch 3 was logged and then killed
    f.write(json.dumps({"epoch": 3, "step": 9, "train_loss": 0.0}) + "\n")
  _fit(wd, 4, resume=True)
  assert [r["epoch"] for r in _records(wd)] == [1, 2, 3, 4]
  assert _records(wd)[2]["train_loss"] == 12.0


def test_resume_of_an_empty_workdir_starts_from_epoch_one(tmp_path, capsys):
  run, _, _, meta = _fit(tmp_path / "new", 2, resume=True)
  assert "no checkpoint" in capsys.readouterr().out
  assert run.meta["epoch"] == 2 and meta["best_epoch"] == 2


def test_early_stop_after_patience_epochs_without_gain(tmp_path, capsys):
  run, state, best, meta = _fit(tmp_path, 7, patience=2)
  out = capsys.readouterr().out
  assert "early stop: no val ndcg@10 gain for 2 epochs" in out
  assert run.meta["epoch"] == 5 and int(state["step"]) == 15  # epochs 4 and 5 without a gain
  assert meta["best_epoch"] == 3 and float(best["w"][0]) == 6.0
  assert "epoch   3  loss 12.0000  val ndcg@10 0.5000  best 0.5000@3" in out


def test_smaller_is_better_and_test_selection(tmp_path):
  _, _, _, meta = _fit(tmp_path / "rmse", 5, metric="rmse", larger=False)
  assert meta["best_epoch"] == 3 and meta["best_metric"] == pytest.approx(-0.5)
  run, _, _, meta = _fit(tmp_path / "test", 5, split="test")  # no validation: the last epoch
  assert meta["best_epoch"] == 5 and "test" in _records(tmp_path / "test")[0]
  assert run.selection.describe() == "last epoch"


def test_eval_every_evaluates_and_saves_only_those_epochs_and_the_last(tmp_path):
  run, _, _, _ = _fit(tmp_path, 7, eval_every=3)
  assert [r["epoch"] for r in _records(tmp_path)] == [3, 6, 7]
  latest = tmp_path / "checkpoints" / "latest"
  assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) == [6, 7]


def test_non_finite_loss_stops_the_run(tmp_path):
  sel = loop.Selection("val", "ndcg@10")
  run, state = loop.open_run(tmp_path, False, _state(), sel, t_start=time.time())
  with pytest.raises(FloatingPointError, match="epoch 1"):
    loop.epoch_loop(run, state, 2, lambda s, e: (s, {"train_loss": math.nan}), _evaluate)
  run.ckpt.close()
  assert loop.RunLog(tmp_path).history() == []  # nothing logged


def test_write_results_fields_and_wall_time_over_sessions(tmp_path):
  cfg = ml_collections.ConfigDict({"experiment": "toy", "data": {"dataset": "none"}})
  with pytest.raises(KeyboardInterrupt):
    _fit(tmp_path, 3, kill_at=2, started_s_ago=100.0)
  run, _, _, best_meta = _fit(tmp_path, 3, resume=True, started_s_ago=50.0)
  assert 100.0 <= run.wall_before < 150.0  # the first session's, from the epoch-1 checkpoint
  assert run.meta["wall_time_s"] >= run.wall_before + 50.0  # summed over both sessions
  out = run.write_results(cfg, "loo", best_meta, {"ndcg@10": 0.5}, {"ndcg@10": 0.4}, extra=1)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved == out and saved["wall_time_s"] >= 150.0
  assert list(saved) == ["experiment", "dataset", "protocol", "best_epoch", "epochs_run", "wall_time_s",
                         "val", "test", "extra", "selection", "config"]
  assert saved["best_epoch"] == 3 and saved["epochs_run"] == 3 and saved["selection"] == "best val ndcg@10"
