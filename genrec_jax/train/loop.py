"""The run-directory bookkeeping and epoch loop shared by every fit loop.

A run directory WORKDIR holds metrics.jsonl and TensorBoard events (`RunLog`), the Orbax
checkpoints `latest` and `best` (train/checkpoint.py) and results.json. Each fit function keeps
its own steps, batches and metrics and hands the rest to this module:

  run, state = open_run(workdir, resume, state, selection, t_start)   # refuse / restore 'latest'
  state = epoch_loop(run, state, num_epochs, train_epoch, evaluate)   # train, evaluate, save
  best_state, best_meta = run.restore_best(state)                     # test on the best
  run.write_results(cfg, protocol, best_meta, val, test)              # results.json

`run.meta` travels with every checkpoint: {'epoch', 'best_epoch', 'best_metric' (a larger-is-
better score), 'wall_time_s' (summed over resumes)} plus a loop's own fields. Resuming restores
it with the state (and the data iterator, if any) and drops the metrics.jsonl records written
after it, so a killed and resumed run ends as an uninterrupted one would.

Multi-process runs: every process opens the run and saves checkpoints (Orbax coordinates them);
only process 0 writes metrics.jsonl and results.json and prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from genrec_jax import distributed
from genrec_jax.train.checkpoint import Checkpoints

State = Any  # a pytree holding 'step'
Metrics = dict[str, Any]


def say(msg: str) -> None:
  """Prints on process 0 only, above any progress bar, flushed (logs are often files)."""
  if distributed.is_main_process():
    tqdm.tqdm.write(msg)
    sys.stdout.flush()


def train_steps(state: State, step: Callable[[State, int], tuple[State, Any]], num_steps: int,
                epoch: int, num_epochs: int, show_every: int = 10) -> tuple[State, float]:
  """One epoch of `state, loss = step(state, i)` for i < num_steps under a progress bar (process
  0 only; the loss shown every `show_every` steps); returns (state, the mean loss)."""
  losses_dev = []
  bar = tqdm.tqdm(range(num_steps), desc=f"epoch {epoch}/{num_epochs}", leave=False,
                  dynamic_ncols=True, mininterval=2.0, disable=not distributed.is_main_process())
  for i in bar:
    state, loss = step(state, i)
    losses_dev.append(loss)
    if i % show_every == show_every - 1:
      bar.set_postfix(loss=f"{float(loss):.4f}")
  return state, float(np.mean(jax.device_get(losses_dev)))


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  """Writes on process 0 only (the others hold the same results)."""
  if not distributed.is_main_process():
    return
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
  tmp.rename(path)


class RunLog:
  """Per-evaluation records to JSONL and TensorBoard, written by process 0 only (all may read)."""

  def __init__(self, workdir: pathlib.Path):
    self.jsonl = workdir / "metrics.jsonl"
    self.writes = distributed.is_main_process()
    if self.writes:
      from tensorboardX import SummaryWriter  # optional heavy import kept local

      self.tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, record: dict[str, Any]) -> None:
    if not self.writes:
      return
    with self.jsonl.open("a") as f:
      f.write(json.dumps(record) + "\n")
    step = record["step"]
    self.tb.add_scalar("train/loss", record["train_loss"], step)
    for split in ("val", "test"):
      for k, v in (record.get(split) or {}).items():
        if k != "num_users":
          self.tb.add_scalar(f"{split}/{k}", v, step)
    self.tb.flush()

  def history(self) -> list[dict[str, Any]]:
    if not self.jsonl.exists():
      return []
    return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

  def truncate_after(self, epoch: float) -> None:
    """Drops records of epochs > `epoch` (written after the checkpoint we resume from)."""
    if not self.writes:
      return
    keep = [r for r in self.history() if r["epoch"] <= epoch]
    self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in keep))


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which evaluation picks the `best` checkpoint: `metric` on `split`. With split 'test' (no
  validation split) the last evaluation is kept, not the best one."""

  split: str  # 'val' | 'test'
  metric: str
  larger_is_better: bool = True

  def score(self, metrics: Metrics) -> float:
    """The metric as a larger-is-better score (what meta['best_metric'] holds)."""
    v = metrics[self.metric]
    return v if self.larger_is_better else -v

  def value(self, score: float) -> float:
    """The metric back from a score."""
    return score if self.larger_is_better else -score

  def describe(self) -> str:
    """results.json's 'selection'."""
    return f"best val {self.metric}" if self.split == "val" else "last epoch"


def holds_run(workdir: pathlib.Path) -> bool:
  """Whether `workdir` holds a run: metrics.jsonl or a finished `latest` checkpoint."""
  latest = workdir / "checkpoints" / "latest"  # Checkpoints' layout
  return (workdir / "metrics.jsonl").exists() or bool(ocp.utils.checkpoint_steps(latest))


def refuse_existing(workdir: str | pathlib.Path, resume: bool) -> pathlib.Path:
  """Raises FileExistsError if `workdir` holds a run and we are not resuming it. Writes nothing
  (cheap: a loop with a slow set-up may call it first, then again through `open_run`)."""
  wd = pathlib.Path(workdir)
  if not resume and holds_run(wd):
    raise FileExistsError(
        f"{wd} already holds a run. Pass --resume to continue it, or choose another --workdir."
    )
  return wd


class Run:
  """One run directory: its checkpoints (`ckpt`), records (`log`) and bookkeeping (`meta`)."""

  def __init__(self, workdir: pathlib.Path, selection: Selection, t_start: float, meta: dict[str, Any],
               data_iter=None):
    self.workdir = workdir
    self.selection = selection
    self.t_start = t_start  # when the fit call began (this session's wall time counts from it)
    self.meta = meta
    self.data_iter = data_iter  # checkpointed with `latest` (batch k of a resumed run as before)
    self.ckpt = Checkpoints(workdir)
    self.log = RunLog(workdir)
    self.wall_before = meta["wall_time_s"]

  def wall_time(self) -> float:
    """Seconds spent on this run, over all sessions."""
    return self.wall_before + time.time() - self.t_start

  def save(self, state: State, metrics: Metrics, epoch: float, step: int | None = None) -> bool:
    """After an evaluation: meta <- (epoch, wall time, and the best so far if `metrics` beat it),
    then `best` (if improved) and `latest` saved at checkpoint step `step` (default: the epoch;
    step-based loops pass the step, recorded as meta['best_step']). Returns whether improved."""
    score = self.selection.score(metrics)
    improved = score > self.meta["best_metric"] or self.selection.split == "test"  # test: the last
    self.meta.update(epoch=epoch, wall_time_s=self.wall_time())
    if improved:
      self.meta.update(best_epoch=epoch, best_metric=score)
      if step is not None:
        self.meta["best_step"] = step
      self.ckpt.save("best", epoch if step is None else step, state, self.meta)
    self.ckpt.save("latest", epoch if step is None else step, state, self.meta, self.data_iter)
    return improved

  def restore_best(self, state: State) -> tuple[State, dict[str, Any]]:
    """(state, meta) of the `best` checkpoint (restored into the structure of `state`); closes
    the checkpoints."""
    best_state, best_meta = self.ckpt.restore("best", state)
    self.ckpt.close()
    return best_state, best_meta

  def write_results(self, cfg, protocol: str, best_meta: dict[str, Any], val: Metrics | None,
                    test: Metrics, **fields) -> dict[str, Any]:
    """results.json (atomically): the fields every experiment reports, then the loop's own."""
    results = {
        "experiment": cfg.experiment,
        "dataset": cfg.data.dataset,
        "protocol": protocol,
        "best_epoch": best_meta["best_epoch"],
        "epochs_run": self.meta["epoch"],
        "wall_time_s": round(self.wall_time(), 1),
        "val": val,
        "test": test,
        **fields,
        "selection": self.selection.describe(),
        "config": cfg.to_dict(),
    }
    write_json_atomic(self.workdir / "results.json", results)
    return results


def open_run(workdir: str | pathlib.Path, resume: bool, state: State, selection: Selection,
             t_start: float, *, data_iter=None, shardings=None,
             meta: dict[str, Any] | None = None) -> tuple[Run, State]:
  """Refuses a workdir holding a run unless `resume`; else opens it and restores `latest`
  (state, meta and `data_iter`) if there is one, dropping the records written after it.

  shardings: where the restored state goes (jax.device_put); meta: a loop's own fields, with
  their starting values."""
  wd = refuse_existing(workdir, resume)
  wd.mkdir(parents=True, exist_ok=True)
  distributed.sync("genrec_fit_start")  # every process has checked the workdir before any writes
  start = {"epoch": 0, "best_epoch": 0, "best_metric": -math.inf, "wall_time_s": 0.0, **(meta or {})}
  run = Run(wd, selection, t_start, start, data_iter)
  if run.ckpt.latest_step("latest") is not None:
    state, run.meta = run.ckpt.restore("latest", state, data_iter)
    if shardings is not None:
      state = jax.device_put(state, shardings)
    run.wall_before = run.meta["wall_time_s"]
    say(f"resumed from epoch {run.meta['epoch']} (step {int(state['step'])})")
  elif resume:
    say(f"--resume: no checkpoint in {wd}; starting from epoch 1")
  run.log.truncate_after(run.meta["epoch"])
  return run, state


def ndcg_hr(metrics: Metrics) -> str:
  """The epoch line's metrics of the ranking loops."""
  return f"ndcg@10 {metrics['ndcg@10']:.4f} hr@10 {metrics['hr@10']:.4f}"


def epoch_loop(
    run: Run,
    state: State,
    num_epochs: int,
    train_epoch: Callable[[State, int], tuple[State, dict[str, Any]]],
    evaluate: Callable[[State], Metrics],
    *,
    patience: int = 0,
    eval_every: int = 1,
    show: Callable[[Metrics], str] | None = None,
    epochs_bar: str | None = None,
) -> State:
  """Epochs run.meta['epoch'] + 1 .. num_epochs; returns the last state.

  train_epoch(state, epoch) -> (state, logs): logs holds 'train_loss' (a non-finite one stops the
  run) and anything else the record should carry. After every `eval_every`-th epoch and the last:
  evaluate(state) -> metrics of the selection split, one metrics.jsonl record, `best` / `latest`
  checkpoints (`Run.save`), one printed line (`show(metrics)`, default the selection metric).
  patience > 0: stops after that many epochs without a better score. epochs_bar: a progress bar
  over the epochs with this title (for loops whose epochs have no bar of their own)."""
  sel = run.selection
  show = show or (lambda m: f"{sel.metric} {m[sel.metric]:.4f}")
  epochs = range(run.meta["epoch"] + 1, num_epochs + 1)
  bar = None
  if epochs_bar is not None:
    bar = tqdm.tqdm(epochs, desc=epochs_bar, dynamic_ncols=True, mininterval=2.0, initial=run.meta["epoch"],
                    total=num_epochs, disable=not distributed.is_main_process())
  for epoch in bar if bar is not None else epochs:
    t_epoch = time.time()
    state, logs = train_epoch(state, epoch)
    train_loss = logs["train_loss"]
    if not math.isfinite(train_loss):
      raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}")
    if bar is not None:
      bar.set_postfix(loss=f"{train_loss:.4f}")
    if epoch % eval_every and epoch != num_epochs:
      continue
    t_eval = time.time()
    record: dict[str, Any] = {"epoch": epoch, "step": int(state["step"]), **logs}
    record[sel.split] = evaluate(state)
    record["train_time_s"] = t_eval - t_epoch
    record["eval_time_s"] = time.time() - t_eval
    record["epoch_time_s"] = time.time() - t_epoch
    run.log.write(record)
    run.save(state, record[sel.split], epoch)
    best = f"{sel.value(run.meta['best_metric']):.4f}@{run.meta['best_epoch']}"
    say(f"epoch {epoch:3d}  loss {train_loss:.4f}  {sel.split} {show(record[sel.split])}  best {best}"
        f"  {record['epoch_time_s']:.1f}s")
    if patience and epoch - run.meta["best_epoch"] >= patience:
      say(f"early stop: no {sel.split} {sel.metric} gain for {patience} epochs")
      break
  return state
