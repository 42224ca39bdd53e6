"""Train-step speed side by side with the PyTorch peers (torch-rechub, RecBole) on ML-1M.

  nice -n 10 python -m benchmarks.compare_peers --data_dir /work/shared/data [--steps 20] [--rounds 3] [--out FILE]

Every measurement runs in its own subprocess, one after the other: our side is
`python -m benchmarks.train_step` (jitted step, XLA cost-analysis FLOPs, matmul-peak roofline),
the peers are `benchmarks/peers/*.py` under the peers' own venv ($GENREC_PEERS_PYTHON, default
/work/peers_venv/bin/python; set up as benchmarks/peers/README.md says). Prints a markdown table
(step time each side, peer/ours ratio, time per epoch = one pass over the same training targets,
roofline fractions) and what differs between the workloads; --out also writes the raw JSON.
With --rounds R each side is measured R times, alternating which goes first, and the ratio is
the median of the R per-round ratios (the machine's speed drifts; see `measure`).
The peers' FLOPs come from torch's FlopCounterMode (matmuls only) and their roofline uses our
measured JAX matmul peak (numpy and torch reach the same peak on this CPU type, see
/work/shared/reference/performance-notes.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")
ML1M_USERS = 6040  # training examples per epoch on our side (one per user), B=128 -> 48 steps


@dataclasses.dataclass(frozen=True)
class Ours:
  experiment: str
  overrides: tuple[str, ...] = ()

  def label(self) -> str:
    return " ".join([self.experiment, *self.overrides]) or self.experiment


@dataclasses.dataclass(frozen=True)
class Peer:
  script: str
  args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  ours: tuple[Ours, ...]
  peer: Peer | None
  differences: str


WORKLOADS = (
    Workload(
        "hstu_full_softmax",
        ours=(Ours("hstu_movielens", ("loss.name=full_softmax", "data.pack=False")),
              Ours("hstu_movielens", ("loss.name=full_softmax",))),
        peer=Peer("torch_rechub_hstu.py"),
        differences=(
            "Same shapes (B=128 users x N=200, D=50, 2 layers, 1 head, dqk=dv=50, dropout 0.2, AdamW "
            "lr 1e-3 b=(0.9, 0.98)), real ML-1M leave-one-out training sequences, full-softmax CE at "
            "every non-PAD position. torch-rechub HSTUModel: affine LayerNorms, biases in both "
            "projections, QK^T scaled by 1/sqrt(dqk), rab per head (position + sqrt-minute time "
            "buckets) plus a time-bucket input embedding, SiLU(.)/200, tied output with an output "
            "bias, logits over all 3,953 ids (PAD masked), no L2 norm or temperature; left-padded "
            "rows. Ours: the generative-recommenders research layer (no affine LN, no UVQK bias, no "
            "1/sqrt(dqk), one rab shared by heads with ln(dt)/0.301 time buckets, SiLU(.)/211), L2-normalised "
            "user and item vectors with tau = 0.05, softmax over the 3,883 catalog items; "
            "`data.pack=False` = one user per row like the peer, default = several users packed per "
            "row (~half the tokens, same loss)."),
    ),
    Workload(
        "hstu_sampled_softmax",
        ours=(Ours("hstu_movielens"),),
        peer=None,
        differences=(
            "Our default: sampled softmax with 128 uniform negatives per position (the "
            "generative-recommenders ML-1M workload). No peer run here: torch-rechub has no sampled "
            "softmax, and the reference's research path needs fbgemm-gpu-cpu and patches to run on CPU "
            "(performance-notes.md records 7-9 s/step for it on this machine type, not re-measured)."),
    ),
    Workload(
        "sasrec_full_softmax",
        ours=(Ours("sasrec_movielens", ("loss.name=full_softmax", "data.pack=False")),
              Ours("sasrec_movielens", ("loss.name=full_softmax",))),
        peer=Peer("recbole_sasrec.py", ("--preset", "matched")),
        differences=(
            "Same model shape (D=50, 2 blocks, 1 head, FFN 50 ReLU, dropout 0.2, N=200, B=128) and "
            "full-softmax CE, but RecBole trains on one example per prefix (~982k per epoch) with the "
            "loss at the LAST position only (Adam, LayerNorm eps 1e-8, RecBole's own ML-1M split), while "
            "ours trains every position of 128 users per step (6,040 examples per epoch). Per-step "
            "times are therefore not comparable; the epoch column (one pass over the same training "
            "targets) is. Ours also L2-normalises and divides by tau = 0.05."),
    ),
    Workload(
        "sasrec_sampled_softmax",
        ours=(Ours("sasrec_movielens"),),
        peer=None,
        differences="Our SASRec default: sampled softmax, 128 negatives per position; no peer run.",
    ),
)


def _last_json(stdout: str) -> dict:
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError(f"no JSON line in output:\n{stdout[-2000:]}")


def _run(cmd: list[str], cwd: str | None = None) -> dict:
  print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
  if p.returncode != 0:
    return {"error": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1]}"}
  try:
    out = _last_json(p.stdout)
  except (RuntimeError, json.JSONDecodeError) as e:
    return {"error": str(e)[:500]}
  print(json.dumps(out), file=sys.stderr, flush=True)  # each figure as soon as it is measured
  return out


def run_ours(o: Ours, data_dir: str, steps: int) -> dict:
  """Our step via benchmarks.train_step (its own process: fresh JAX, tcmalloc, host devices)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "benchmarks.train_step", "--experiment", o.experiment,
         "--data_dir", data_dir, "--steps", str(steps), *[f"--config.{x}" for x in o.overrides]]
  return _run(cmd, cwd=repo)


def run_peer(p: Peer, python: str, data_dir: str, steps: int) -> dict:
  if not os.path.exists(python):
    return {"error": f"{python} not found (see benchmarks/peers/README.md)"}
  return _run([python, os.path.join(PEERS_DIR, p.script), "--data_dir", data_dir, "--steps", str(steps),
               *p.args])


def _ms(r: dict | None) -> str:
  return "—" if not r or "error" in r else f"{r['step_ms_median']:.0f}"


def _epoch_s(r: dict | None, steps_per_epoch: int) -> float | None:
  return None if not r or "error" in r else r["step_ms_median"] * steps_per_epoch / 1000


def _fmt(x: float | None, spec: str) -> str:
  return "—" if x is None else format(x, spec)


def table(results: list[dict]) -> str:
  """Markdown table of the measurements (one row per (workload, our variant))."""
  ours_spe = -(-ML1M_USERS // 128)
  lines = ["| workload | ours (train_step config overrides) | ours ms/step | ours roofline | peer ms/step "
           "| peer roofline | peer/ours per step | ours s/epoch | peer s/epoch | peer/ours per epoch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    for o in r["ours"]:
      m, peer = o["result"], r["peer"]
      ok = "error" not in m
      peak = m.get("matmul_peak_gflops") if ok else None
      peer_ok = peer is not None and "error" not in peer
      peer_roof = (peer["flops_per_step"] / (peak * 1e9) / (peer["step_ms_median"] / 1000)
                   if peer_ok and peak and peer.get("flops_per_step") else None)
      ratio = peer["step_ms_median"] / m["step_ms_median"] if ok and peer_ok else None
      if ok and m.get("ratio_rounds"):  # paired by round (see measure)
        ratio = statistics.median(m["ratio_rounds"])
      ours_ep = _epoch_s(m if ok else None, ours_spe)
      peer_ep = _epoch_s(peer, peer.get("steps_per_epoch", ours_spe)) if peer_ok else None
      lines.append(
          f"| {r['name']} | {o['label']} | {_ms(m) if ok else 'error'} | "
          f"{_fmt(m.get('roofline_fraction') if ok else None, '.1%')} | {_ms(peer) if peer else 'n/a'} | "
          f"{_fmt(peer_roof, '.1%')} | {_fmt(ratio, '.1f')} | {_fmt(ours_ep, '.1f')} | {_fmt(peer_ep, '.0f')} | "
          f"{_fmt(peer_ep / ours_ep if peer_ep and ours_ep else None, '.0f')} |")
  return "\n".join(lines)


def _median_run(runs: list[dict]) -> dict:
  """The run with the median step time (the lower middle one for an even count), with every
  round's median step time in `rounds_ms`; the first error if any run failed."""
  errors = [r for r in runs if "error" in r]
  if errors:
    return errors[0]
  ordered = sorted(runs, key=lambda r: r["step_ms_median"])
  return dict(ordered[(len(ordered) - 1) // 2], rounds_ms=[r["step_ms_median"] for r in runs])


def measure(w: Workload, data_dir: str, steps: int, rounds: int, peers_python: str) -> dict:
  """`rounds` rounds of the peer and each of our variants, the side that goes first alternating.

  This CPU's speed drifts by tens of percent over minutes; one measurement per side can put the
  peer in a fast period and ours in a slow one. Each round's peer/ours ratio compares two runs
  a minute apart, and the table reports the median of those ratios (`ratio_rounds`)."""
  peer_runs: list[dict] = []
  ours_runs: list[list[dict]] = [[] for _ in w.ours]
  for k in range(rounds):
    sides = ["peer", "ours"] if k % 2 == 0 else ["ours", "peer"]
    for side in sides:
      if side == "peer" and w.peer:
        peer_runs.append(run_peer(w.peer, peers_python, data_dir, steps))
      if side == "ours":
        for runs, o in zip(ours_runs, w.ours):
          runs.append(run_ours(o, data_dir, steps))
  peer = _median_run(peer_runs) if w.peer else None
  ours = []
  for o, runs in zip(w.ours, ours_runs):
    result = _median_run(runs)
    if peer is not None and "error" not in peer and "error" not in result:
      result["ratio_rounds"] = [p["step_ms_median"] / r["step_ms_median"] for p, r in zip(peer_runs, runs)]
    ours.append({"label": o.label(), "result": result})
  return {"name": w.name, "ours": ours, "peer": peer, "differences": w.differences}


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  names = {w.name for w in WORKLOADS}
  unknown = set(f.only) - names
  if unknown:
    sys.exit(f"error: unknown workload(s) {sorted(unknown)}; choose from {sorted(names)}")
  if f.rounds < 1:
    sys.exit(f"error: --rounds must be >= 1, got {f.rounds}")
  results = []
  for w in WORKLOADS:
    if f.only and w.name not in f.only:
      continue
    results.append(measure(w, f.data_dir, f.steps, f.rounds, f.peers_python))
    if f.out:  # after every workload, so an interrupted run keeps what it measured
      with open(f.out, "w") as fh:
        json.dump(results, fh, indent=1)
  print(table(results))
  print()
  for r in results:
    print(f"- **{r['name']}**: {r['differences']}")
    for o in r["ours"]:
      if "rounds_ms" in o["result"] and len(o["result"]["rounds_ms"]) > 1:
        print(f"  - {o['label']}: ours ms per round {o['result']['rounds_ms']}, "
              f"peer/ours per round {[round(x, 2) for x in o['result'].get('ratio_rounds', [])]}")
    if r["peer"] and "rounds_ms" in r["peer"] and len(r["peer"]["rounds_ms"]) > 1:
      print(f"  - peer ms per round {r['peer']['rounds_ms']}")
    for e in [o["result"] for o in r["ours"]] + [r["peer"]]:
      if e and "error" in e:
        print(f"  - error: {e['error']}")


def define_flags() -> None:
  """Flags, defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("data_dir", os.environ.get("GENREC_DATA_DIR", "data"), "Dataset root.")
  flags.DEFINE_integer("steps", 20, "Timed steps per measurement (after warm-up).")
  flags.DEFINE_integer("rounds", 1, "Measurements per side, alternating peer-first and ours-first; "
                       "the ratio is the median of the per-round ratios.")
  flags.DEFINE_string("peers_python", os.environ.get("GENREC_PEERS_PYTHON", "/work/peers_venv/bin/python"),
                      "Python of the peers' venv (torch, torch-rechub, recbole).")
  flags.DEFINE_list("only", [], "Run only these workloads (names in WORKLOADS); default all.")
  flags.DEFINE_string("out", "", "Also write the raw measurements here as JSON.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
