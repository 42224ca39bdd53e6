"""Orbax checkpoints of (train state, grain iterator, run bookkeeping), with integrity manifests.

Two managers under WORKDIR/checkpoints: `latest` (every epoch, for --resume; the last two are
kept) and `best` (the epoch with the best validation metric, for evaluation and export). Saves
are synchronous and atomic (Orbax writes to a temporary directory and renames it). After each
save we record the SHA-256 of every file of the step in `genrec_manifest.json`; restore verifies
it first, so a truncated or bit-flipped checkpoint is reported as corrupt instead of silently
loaded. Resuming falls back to the previous `latest` step if the newest fails verification (a
kill between the save and its manifest); `best` never falls back.

Multi-process runs: every process calls save / restore (Orbax coordinates them; the state is
replicated, so its arrays are written once) and each process's grain iterator state is its own
file (`data/process_<i>-of-<n>.json`). The manifest is written by process 0 after all processes
finished writing, and every process waits for it before going on. WORKDIR must be a filesystem
shared by all hosts.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp

from genrec_jax import distributed

MANIFEST = "genrec_manifest.json"


class CorruptCheckpointError(RuntimeError):
  pass


def _file_digests(step_dir: pathlib.Path) -> dict[str, str]:
  out = {}
  for f in sorted(step_dir.rglob("*")):
    if f.is_file() and f.name != MANIFEST:
      out[str(f.relative_to(step_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
  return out


def _write_manifest(step_dir: pathlib.Path) -> None:
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(_file_digests(step_dir), indent=0, sort_keys=True))
  tmp.rename(step_dir / MANIFEST)


def verify(step_dir: pathlib.Path) -> None:
  """Raises CorruptCheckpointError if any file of the checkpoint differs from its manifest."""
  manifest = step_dir / MANIFEST
  if not manifest.exists():
    raise CorruptCheckpointError(f"{step_dir}: no {MANIFEST}; the checkpoint is incomplete")
  want = json.loads(manifest.read_text())
  have = _file_digests(step_dir)
  bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
  if bad:
    raise CorruptCheckpointError(
        f"{step_dir}: checkpoint is corrupt: {len(bad)} file(s) missing or changed since it was "
        f"saved, e.g. {bad[:3]}. Delete this step directory to fall back to an older one."
    )


class Checkpoints:
  """The `latest` and `best` checkpoint managers of one run directory."""

  def __init__(self, workdir: str | pathlib.Path):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    def opts(keep):
      return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)

    self.root = root
    self.latest = ocp.CheckpointManager(root / "latest", options=opts(2))
    self.best = ocp.CheckpointManager(root / "best", options=opts(1))

  def save(
      self,
      which: str,
      step: int,
      state: Any,
      meta: dict[str, Any],
      data_iter: grain.DatasetIterator | None = None,
  ) -> None:
    mngr = getattr(self, which)
    if step in mngr.all_steps():  # a resumed run redoing an epoch whose save was interrupted
      mngr.delete(step)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()
    distributed.sync(f"genrec_ckpt_{which}_{step}_written")
    if distributed.is_main_process():
      _write_manifest(root_step_dir(mngr, step))
    distributed.sync(f"genrec_ckpt_{which}_{step}_manifest")

  def latest_step(self, which: str) -> int | None:
    return getattr(self, which).latest_step()

  def restore(
      self, which: str, target_state: Any, data_iter: grain.DatasetIterator | None = None
  ) -> tuple[Any, dict[str, Any]]:
    """Restores the newest verified step of `which` into the structure of `target_state`."""
    mngr = getattr(self, which)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.root / which}")
    for i, step in enumerate(steps):
      try:
        verify(root_step_dir(mngr, step))
        break
      except CorruptCheckpointError as e:
        if which != "latest" or i == len(steps) - 1:
          raise
        if distributed.is_main_process():
          print(f"warning: {e}\nfalling back to {which} step {steps[i + 1]}")
    items = {"state": ocp.args.StandardRestore(target_state), "meta": ocp.args.JsonRestore()}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return out["state"], out["meta"]

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def root_step_dir(mngr: ocp.CheckpointManager, step: int) -> pathlib.Path:
  return pathlib.Path(mngr.directory) / str(step)
