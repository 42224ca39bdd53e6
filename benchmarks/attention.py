"""Attention speed and memory vs sequence length: HSTU dense / blockwise and causal softmax.

  python -m benchmarks.attention [--ns 256,512,1024,2048,4096,8192] [--tokens 8192] [--heads 2]
      [--dim 64] [--block 128] [--repeats 5] [--max_temp_gib 6] [--out attention.md]

One step = one attention layer's forward + backward (gradients of sum(out ⊙ w) with respect to
q, k, v, and the rab weights for HSTU), fp32, B = tokens / N rows so every N processes the same
number of tokens. HSTU runs as the model does: one user per row, time + position bias, SiLU/N.
Implementations:
  hstu_dense      nn/hstu.py dense path ([B, H, N, N] scores; rab via broadcast_rows)
  hstu_blockwise  nn/hstu.py blockwise_attention (tiles of block × block, causal tiles skipped)
  softmax_dense   causal softmax attention written in jnp (scores materialised)
  softmax_jax     jax.nn.dot_product_attention(is_causal=True) (XLA's implementation on CPU)

Each config runs in its own subprocess so that the process's max RSS belongs to that config.
Memory: XLA's compiled memory analysis (temp bytes = intermediates the step needs, excluding
arguments and outputs) and the subprocess's max RSS (ru_maxrss, includes the JAX runtime,
inputs and compiled code, and the compiler's peak; `rss_base_mib` is the same process before
compiling) and, where Linux allows resetting the peak (/proc/self/clear_refs), the peak RSS while
running the step only (`run_peak_rss_mib`, from `run_start_rss_mib` after warm-up).
Configs whose compiled temp bytes exceed --max_temp_gib are compiled but not run.
Prints one JSON line per config and writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IMPLS = ("hstu_dense", "hstu_blockwise", "softmax_dense", "softmax_jax")


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def make_step(impl: str, n: int, block: int):
  """(loss_and_grads_fn, args) for one implementation; grads w.r.t. all float inputs."""
  import jax
  import jax.numpy as jnp

  from genrec_jax.nn import hstu

  def hstu_dense(q, k, v, seg, pos_w, ts_w, tq, tk):
    b = seg.shape[0]
    i = jnp.arange(n)
    rab = hstu.broadcast_rows(pos_w[n - 1 + i[None, :] - i[:, None]], b)
    rab = rab + ts_w[hstu.time_buckets(tq, tk)]
    s = jnp.einsum("bnhd,bmhd->bhnm", q, k) + rab[:, None]
    a = jnp.where(hstu.attention_mask(seg)[:, None], jax.nn.silu(s) / n, 0.0)
    return jnp.einsum("bhnm,bhmd->bhnd", a, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)

  def hstu_blockwise(q, k, v, seg, pos_w, ts_w, tq, tk):
    return hstu.blockwise_attention(q, k, v, seg, pos_w, ts_w, tq, tk, n, block)

  def softmax_dense(q, k, v, *_):
    s = jnp.einsum("bnhd,bmhd->bhnm", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    causal = jnp.tril(jnp.ones((n, n), bool))
    p = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
    return jnp.einsum("bhnm,bmhd->bnhd", p, v)

  def softmax_jax(q, k, v, *_):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)

  fn = {"hstu_dense": hstu_dense, "hstu_blockwise": hstu_blockwise,
        "softmax_dense": softmax_dense, "softmax_jax": softmax_jax}[impl]
  hstu_impl = impl.startswith("hstu")

  def step(q, k, v, seg, pos_w, ts_w, tq, tk, w):
    def loss(q, k, v, pos_w, ts_w):
      return jnp.sum(fn(q, k, v, seg, pos_w, ts_w, tq, tk) * w)

    argnums = (0, 1, 2, 3, 4) if hstu_impl else (0, 1, 2)
    return jax.value_and_grad(loss, argnums)(q, k, v, pos_w, ts_w)

  return step


def make_inputs(b: int, n: int, h: int, d: int, seed: int = 0):
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(seed)
  q, k, v, w = (jnp.asarray(rng.normal(0, 0.5, (b, n, h, d)), jnp.float32) for _ in range(4))
  seg = jnp.ones((b, n), jnp.int32)
  ts = np.sort(rng.integers(10**9, 10**9 + 10**8, (b, n + 1)), axis=1)
  tk, tq = jnp.asarray(ts[:, :n], jnp.int32), jnp.asarray(ts[:, 1:], jnp.int32)
  pos_w = jnp.asarray(rng.normal(0, 0.02, 2 * n - 1), jnp.float32)
  ts_w = jnp.asarray(rng.normal(0, 0.02, 129), jnp.float32)
  return q, k, v, seg, pos_w, ts_w, tq, tk, w


def run_one(impl: str, n: int, tokens: int, h: int, d: int, block: int, repeats: int,
            max_temp_gib: float) -> dict:
  """Compiles and times one config in this process."""
  import jax

  b = max(1, tokens // n)
  args = make_inputs(b, n, h, d)
  jax.block_until_ready(args)
  rss_base = _rss_mib()
  step = jax.jit(make_step(impl, n, block))
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  rec = {
      "impl": impl, "n": n, "batch": b, "heads": h, "dim": d,
      "block": block if impl == "hstu_blockwise" else None,
      "compile_s": round(compile_s, 2),
      "temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
      "args_mib": round(mem.argument_size_in_bytes / 2**20, 1),
      "out_mib": round(mem.output_size_in_bytes / 2**20, 1),
      "rss_base_mib": round(rss_base, 1),
  }
  if mem.temp_size_in_bytes > max_temp_gib * 2**30:
    rec["skipped"] = f"temp > {max_temp_gib} GiB"
    return rec
  jax.block_until_ready(compiled(*args))  # warm-up
  reset = _reset_peak_rss()  # from here on the peak excludes the compiler's own memory
  rss_before_run = _peak_rss_mib()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  rec.update(
      step_ms_median=round(1e3 * med, 2),
      step_ms_min=round(1e3 * min(times), 2),
      tokens_per_s=round(b * n / med, 1),
      max_rss_mib=round(_rss_mib(), 1),
  )
  if reset:
    rec.update(run_peak_rss_mib=round(_peak_rss_mib(), 1), run_start_rss_mib=round(rss_before_run, 1))
  return rec


def markdown(records: list[dict]) -> str:
  lines = [
      "| impl | N | B | tokens/s | step ms (median) | XLA temp MiB | run peak RSS MiB (start) | max RSS MiB (base) | compile s |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in records:
    if "error" in r:
      lines.append(f"| {r['impl']} | {r['n']} | | error: {r['error'][:60]} | | | | | |")
      continue
    tps = r.get("tokens_per_s", r.get("skipped", ""))
    ms = r.get("step_ms_median", "")
    rss = f"{r['max_rss_mib']} ({r['rss_base_mib']})" if "max_rss_mib" in r else ""
    run = f"{r['run_peak_rss_mib']} ({r['run_start_rss_mib']})" if "run_peak_rss_mib" in r else ""
    lines.append(f"| {r['impl']} | {r['n']} | {r['batch']} | {tps} | {ms} | {r['temp_mib']} | {run} | {rss} | {r['compile_s']} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ns", default="256,512,1024,2048,4096,8192")
  ap.add_argument("--impls", default=",".join(IMPLS))
  ap.add_argument("--tokens", type=int, default=8192, help="B·N, the same for every N")
  ap.add_argument("--heads", type=int, default=2)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--block", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--max_temp_gib", type=float, default=6.0)
  ap.add_argument("--out", default="attention_benchmark.md")
  ap.add_argument("--single", default="", help="internal: 'impl,n' runs one config in-process")
  a = ap.parse_args()
  if a.single:
    impl, n = a.single.split(",")
    print(json.dumps(run_one(impl, int(n), a.tokens, a.heads, a.dim, a.block, a.repeats, a.max_temp_gib)))
    return
  records = []
  for n in (int(x) for x in a.ns.split(",")):
    for impl in a.impls.split(","):
      if impl not in IMPLS:
        raise SystemExit(f"unknown impl {impl!r}; expected one of {IMPLS}")
      cmd = [sys.executable, "-m", "benchmarks.attention", "--single", f"{impl},{n}",
             "--tokens", str(a.tokens), "--heads", str(a.heads), "--dim", str(a.dim),
             "--block", str(a.block), "--repeats", str(a.repeats), "--max_temp_gib", str(a.max_temp_gib)]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
      if proc.returncode == 0:
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
      else:  # e.g. killed by the OOM killer: record it and go on
        err = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else (
            proc.stderr.strip().splitlines() or ["?"])[-1]
        rec = {"impl": impl, "n": n, "error": err, "returncode": proc.returncode}
      print(json.dumps(rec), flush=True)
      records.append(rec)
  with open(a.out, "w") as f:
    f.write(f"Attention fwd+bwd, fp32, B·N = {a.tokens}, H = {a.heads}, d = {a.dim}, "
            f"block = {a.block}, median of {a.repeats}; {os.cpu_count()} CPUs.\n\n")
    f.write(markdown(records))
  print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
