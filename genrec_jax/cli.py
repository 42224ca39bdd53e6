"""Command line shared by all experiments.

  python -m experiments.NAME --workdir DIR [--data_dir DIR] [--download] [--resume] [--eval_only]
                             [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]
                             [--config.train.num_epochs=3 ...]

--data_dir defaults to $GENREC_DATA_DIR, else data/. Every config field can be overridden with
--config.<path>=<value>.

Multi-process (multi-host) runs: the same command in every process, with --coordinator_address
(process 0's HOST:PORT), --num_processes and --process_id, or $GENREC_COORDINATOR,
$GENREC_NUM_PROCESSES, $GENREC_PROCESS_ID; `--coordinator_address=auto` lets JAX detect them on
Cloud TPU, SLURM and Open MPI. See genrec_jax/distributed.py.

Speed on CPU, set up before JAX starts (`configure_runtime`):
- XLA:CPU allocates and frees hundreds of MB per train step; with glibc's malloc every step
  page-faults fresh memory (measured: 2x slower steps, most time in the kernel). If tcmalloc is
  installed (Debian: libtcmalloc-minimal4) the command re-executes itself once with it preloaded.
  Set GENREC_NO_TCMALLOC=1 to opt out.
- The host CPU is split into GENREC_HOST_DEVICES JAX devices (default: 2 when the machine has
  2+ cores) and the train step runs data-parallel over them: one XLA program per device keeps
  both cores busy where a single program leaves them idle ~30% of a step (measured on 2 cores:
  410-440 ms -> 298-321 ms per HSTU ML-1M step). GPUs/TPUs are unaffected (the flag only shapes
  the CPU platform). GENREC_HOST_DEVICES=1 turns it off.
"""

from __future__ import annotations

import glob
import os
import sys
import traceback
from typing import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from genrec_jax import distributed
from genrec_jax.config import ConfigError
from genrec_jax.data.errors import DataFormatError, DatasetNotFoundError, DownloadError
from genrec_jax.train.checkpoint import CorruptCheckpointError

USER_ERRORS = (ConfigError, DataFormatError, DatasetNotFoundError, DownloadError, CorruptCheckpointError, FileExistsError)


def default_data_dir() -> str:
  return os.environ.get("GENREC_DATA_DIR", "data")


def tcmalloc_path() -> str | None:
  libs = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4") + glob.glob("/usr/lib/libtcmalloc_minimal.so.4"))
  return libs[0] if libs else None


HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def host_devices() -> int:
  """How many JAX devices the CPU platform is split into (module doc)."""
  value = os.environ.get("GENREC_HOST_DEVICES")
  if value is None:
    return 2 if (os.cpu_count() or 1) >= 2 else 1
  if not value.isdigit() or int(value) < 1:
    raise ConfigError(f"GENREC_HOST_DEVICES must be a positive integer, got {value!r}")
  return int(value)


def with_host_devices(xla_flags: str, n: int) -> str:
  """XLA_FLAGS with the host device count set, unless the user already set one."""
  if HOST_DEVICE_FLAG in xla_flags or n == 1:
    return xla_flags
  return f"{xla_flags} {HOST_DEVICE_FLAG}={n}".strip()


def configure_runtime() -> None:
  """Host device count and tcmalloc (module doc). Call before JAX initialises its backends."""
  os.environ["XLA_FLAGS"] = with_host_devices(os.environ.get("XLA_FLAGS", ""), host_devices())
  maybe_reexec_with_tcmalloc()


def maybe_reexec_with_tcmalloc() -> None:
  """Re-runs this `python -m MODULE ...` command with tcmalloc preloaded (see module doc)."""
  preload = os.environ.get("LD_PRELOAD", "")
  lib = tcmalloc_path()
  if os.environ.get("GENREC_NO_TCMALLOC") or "tcmalloc" in preload or lib is None:
    return
  main_mod = sys.modules.get("__main__")
  spec = getattr(main_mod, "__spec__", None)
  if spec is None or not spec.name:
    return
  env = dict(os.environ, LD_PRELOAD=f"{lib}:{preload}" if preload else lib)
  os.execve(sys.executable, [sys.executable, "-m", spec.name, *sys.argv[1:]], env)


def run(get_config: Callable[[], ml_collections.ConfigDict], main: Callable) -> None:
  """Defines the shared flags and runs `main(config, workdir, data_dir, resume, eval_only)`."""
  try:
    configure_runtime()
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.json.", required=True)
  flags.DEFINE_string("data_dir", default_data_dir(), "Dataset root ($GENREC_DATA_DIR, else data/).")
  flags.DEFINE_bool("download", False, "Fetch a missing dataset from its official URL (checksummed).")
  flags.DEFINE_bool("resume", False, "Continue the interrupted run in --workdir.")
  flags.DEFINE_bool("eval_only", False, "Reload the best checkpoint in --workdir and report metrics.")
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-process: process 0's HOST:PORT ($GENREC_COORDINATOR); 'auto' on TPU/SLURM.")
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes ($GENREC_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index ($GENREC_PROCESS_ID).")
  config_flags.DEFINE_config_dict("config", get_config())
  f = flags.FLAGS

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if f.download:
      f.config.data.download = True
    try:
      distributed.initialize(distributed.process_group(f.coordinator_address, f.num_processes, f.process_id))
      main(f.config, f.workdir, f.data_dir, f.resume, f.eval_only)
    except USER_ERRORS as e:  # bad input: one clear line, no traceback, nothing written
      print(f"error: {e}", file=sys.stderr)
      if distributed.is_multiprocess():
        distributed.exit_now(2)
      sys.exit(2)
    except Exception as e:  # multi-process: name the lost peers, exit now instead of hanging
      if not distributed.is_multiprocess():
        raise
      traceback.print_exc()
      print(f"error: {distributed.describe_failure(e)}", file=sys.stderr)
      distributed.exit_now(1)

  app.run(_main, argv=sys.argv)

