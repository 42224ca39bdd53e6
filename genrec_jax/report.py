"""Tables and plots from run directories (results.json + metrics.jsonl).

  python -m genrec_jax.report runs/hstu_ml1m runs/sasrec_ml1m     # markdown table to stdout
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

COLUMNS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr")
AT5_COLUMNS = ("hr@5", "ndcg@5")  # shown only when the paper reports them (the Amazon tables)


def comparison_table(results: dict[str, Any], paper: dict[str, float] | None) -> str:
  """Markdown: our test metrics, the paper's, and the relative difference."""
  wanted = [c for c in AT5_COLUMNS if c in (paper or {})] + list(COLUMNS)
  cols = [c for c in wanted if c in (results.get("test") or {})]
  lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  ours = results["test"]
  lines.append("| ours (test) | " + " | ".join(f"{ours[c]:.4f}" for c in cols) + " |")
  for key in sorted(k for k in results if k.startswith("test_") and isinstance(results[k], dict)):
    sub = results[key]  # e.g. test_cold / test_warm of a cold-start split
    label = f"ours ({key.replace('_', ': ', 1)}, {sub.get('num_users', '?')} users)"
    lines.append(f"| {label} | " + " | ".join(f"{sub[c]:.4f}" for c in cols) + " |")
  if paper:
    lines.append("| paper | " + " | ".join(f"{paper[c]:.4f}" if c in paper else "–" for c in cols) + " |")
    lines.append(
        "| ours / paper | "
        + " | ".join(f"{ours[c] / paper[c] - 1:+.1%}" if c in paper else "–" for c in cols)
        + " |"
    )
  return "\n".join(lines)


def plot_curve(history: list[dict[str, Any]], path: pathlib.Path, metric: str = "ndcg@10") -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  split = "val" if any(r.get("val") for r in history) else "test"
  epochs = [r["epoch"] for r in history]
  values = [r[split][metric] for r in history]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(epochs, values, marker=".")
  ax.set_xlabel("epoch")
  ax.set_ylabel(f"{split} {metric}")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_summary(workdir: pathlib.Path) -> str:
  r = json.loads((workdir / "results.json").read_text())
  paper = r.get("config", {}).get("paper") or None
  head = (
      f"**{r['experiment']}** on {r['dataset']}, protocol `{r['protocol']}`, selection: "
      f"{r.get('selection')}, best epoch {r['best_epoch']} of {r['epochs_run']}, "
      f"wall time {r['wall_time_s'] / 60:.1f} min"
  )
  return head + "\n\n" + comparison_table(r, paper)


def main(argv: list[str]) -> None:
  for d in argv:
    print(run_summary(pathlib.Path(d)) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
