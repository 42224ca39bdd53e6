"""Multi-process (multi-host) runs on JAX's multi-controller runtime.

Every process runs the same program on its own devices; `jax.distributed.initialize` connects
them through a coordinator (process 0) and jitted steps over a mesh spanning all processes'
devices exchange gradients with collectives (on CPU: gloo over TCP).

- Launch: the same command on every process with --coordinator_address=HOST:PORT
  --num_processes=N --process_id=I (or GENREC_COORDINATOR / GENREC_NUM_PROCESSES /
  GENREC_PROCESS_ID). On Cloud TPU slices, SLURM and Open MPI JAX detects them itself: pass
  --num_processes only if auto-detection must be forced (`--coordinator_address=auto`).
- Data: every global batch has R rows, split into equal contiguous blocks over the mesh's
  'data' axis; each process builds only the rows its devices hold (`data_shard`) and
  `global_batch` assembles the global array, so the global batch equals the one-process batch.
- Failure: the coordinator declares a process dead after `heartbeat_timeout_s` without
  heartbeats and the survivors stop with an error naming the lost task (no hang).
- Only process 0 writes logs and results (`is_main_process`); checkpoints are written by all.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genrec_jax.config import ConfigError

ENV_COORDINATOR = "GENREC_COORDINATOR"
ENV_NUM_PROCESSES = "GENREC_NUM_PROCESSES"
ENV_PROCESS_ID = "GENREC_PROCESS_ID"
ENV_HEARTBEAT = "GENREC_HEARTBEAT_TIMEOUT"  # seconds without heartbeats before a peer is dead


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """How to join a multi-process run (all None: a single process)."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_s: int = 100  # JAX's default
  shutdown_timeout_s: int = 300  # JAX's default
  init_timeout_s: int = 300
  auto: bool = False  # let JAX detect the cluster (Cloud TPU, SLURM, Open MPI)

  @property
  def enabled(self) -> bool:
    return self.auto or self.coordinator_address is not None or (self.num_processes or 1) > 1


def _env_int(name: str, value: int | None) -> int | None:
  if value is not None:
    return value
  raw = os.environ.get(name)
  if raw is None or raw == "":
    return None
  if not raw.isdigit():
    raise ConfigError(f"{name} must be a non-negative integer, got {raw!r}")
  return int(raw)


def process_group(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessGroup:
  """The process group from flags, falling back to the GENREC_* environment variables."""
  address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  n = _env_int(ENV_NUM_PROCESSES, num_processes)
  pid = _env_int(ENV_PROCESS_ID, process_id)
  heartbeat = _env_int(ENV_HEARTBEAT, None) or ProcessGroup.heartbeat_timeout_s
  group = ProcessGroup(address, n, pid, heartbeat_timeout_s=heartbeat)
  if not group.enabled:
    return group
  if address == "auto":  # TPU / SLURM / Open MPI: JAX fills in what is missing
    return dataclasses.replace(group, coordinator_address=None, auto=True)
  if address is None or n is None or pid is None:
    raise ConfigError(
        "a multi-process run needs --coordinator_address=HOST:PORT, --num_processes and "
        f"--process_id (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got "
        f"coordinator_address={address!r}, num_processes={n}, process_id={pid}. On TPU / SLURM "
        "pass --coordinator_address=auto to let JAX detect them"
    )
  if ":" not in address:
    raise ConfigError(f"coordinator address must be HOST:PORT, got {address!r}")
  if n < 1 or not 0 <= pid < n:
    raise ConfigError(f"process_id must be in [0, num_processes={n}), got {pid}")
  return group


def initialize(group: ProcessGroup) -> None:
  """Joins the process group (no-op for a single process). Call before any JAX computation."""
  if not group.enabled:
    return
  # gloo is jax 0.10's default for cross-process CPU collectives; set it explicitly so CPU
  # runs never fall back to a single-process client. Ignored by GPU / TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=group.coordinator_address,
      num_processes=group.num_processes,
      process_id=group.process_id,
      initialization_timeout=group.init_timeout_s,
      heartbeat_timeout_seconds=group.heartbeat_timeout_s,
      shutdown_timeout_seconds=group.shutdown_timeout_s,
  )


def is_main_process() -> bool:
  """True on the process that writes logs, results and prints (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier over all processes (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


Shard = tuple[int, int, int]  # (first block, end block, number of blocks) of every global batch


def data_shard(mesh: Mesh) -> Shard:
  """The contiguous blocks of the mesh's 'data' axis whose devices belong to this process.

  A global batch of R rows is cut into `count` equal blocks along 'data'; this process builds
  rows [R * lo / count, R * hi / count).
  """
  axis = mesh.axis_names.index("data")
  devices = np.moveaxis(mesh.devices, axis, 0)
  devices = devices.reshape(devices.shape[0], -1)
  me = jax.process_index()
  mine = [d for d in range(devices.shape[0]) if any(x.process_index == me for x in devices[d])]
  if not mine or mine != list(range(mine[0], mine[-1] + 1)):
    raise ValueError(f"process {me} holds non-contiguous blocks {mine} of the 'data' mesh axis")
  return mine[0], mine[-1] + 1, devices.shape[0]


def shard_rows(num_rows: int, shard: Shard | None) -> tuple[int, int]:
  """[start, stop) of the rows this process builds out of a global batch of `num_rows`."""
  if shard is None:
    return 0, num_rows
  lo, hi, count = shard
  if num_rows % count:
    raise ValueError(f"a batch of {num_rows} rows cannot be split into {count} equal blocks")
  return num_rows * lo // count, num_rows * hi // count


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local rows (this process's `data_shard`) -> global arrays sharded on 'data'."""
  sharding = NamedSharding(mesh, P("data"))
  lo, hi, count = data_shard(mesh)
  out = {}
  for k, v in local.items():
    if len(v) % (hi - lo):
      raise ValueError(f"batch field {k!r}: {len(v)} local rows for {hi - lo} blocks")
    global_shape = (len(v) // (hi - lo) * count,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process sharded) array, on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_multiprocess() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def describe_failure(error: BaseException, wait_s: float = 5.0) -> str:
  """Which processes are gone, for the error message of a process whose run failed.

  A peer that dies mid-run makes the survivors' next collective fail at once (gloo: 'Connection
  closed by peer'). Each failing process posts its error to the coordinator's key-value store
  and waits `wait_s` for the others: those that post nothing are reported as lost; if the
  coordinator itself is unreachable, process 0 is the one lost.
  """
  from jax._src import distributed as jax_distributed  # the client of jax.distributed.initialize

  client = jax_distributed.global_state.client
  me, n = jax.process_index(), jax.process_count()
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  head = f"process {me} of {n} failed ({type(error).__name__}: {first_line})"
  try:
    client.key_value_set(f"genrec/failed/{me}", first_line, allow_overwrite=True)
    reported: dict[int, str] = {}
    deadline = time.time() + wait_s
    while True:
      for j in range(n):
        if j not in reported:
          try:
            reported[j] = client.key_value_try_get(f"genrec/failed/{j}")
          except Exception:  # not posted (yet)
            pass
      if len(reported) == n or time.time() > deadline:
        break
      time.sleep(0.2)
  except Exception:  # the coordination service (in process 0) is gone
    return (f"{head}: lost the coordinator (process 0 at {jax_distributed.global_state.coordinator_address})"
            " - it died or became unreachable; see its log")
  lost = [j for j in range(n) if j not in reported]
  others = [f"process {j}: {msg}" for j, msg in sorted(reported.items()) if j != me]
  if lost:
    return (f"{head}: lost process(es) {lost} of the run - they stopped responding (killed, crashed "
            "or unreachable); see their logs" + (f". Also failed: {'; '.join(others)}" if others else ""))
  return head + (f". Also failed: {'; '.join(others)}" if others else "")


def exit_now(code: int) -> None:
  """Exits without JAX's shutdown barrier, which would wait for dead peers
  (shutdown_timeout_s) before aborting."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
