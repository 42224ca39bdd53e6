"""End-to-end recipes that experiment files call: data -> fit -> results and report."""

from __future__ import annotations

import pathlib

import ml_collections

from genrec_jax import report
from genrec_jax.data.registry import load_task
from genrec_jax.train import trainer


def run_sequential(
    cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool, eval_only: bool
) -> dict:
  """Trains (or, with eval_only, re-evaluates) a sequential recommender and prints the table."""
  task = load_task(cfg, data_dir)
  wd = pathlib.Path(workdir)
  if eval_only:
    out = trainer.evaluate_checkpoint(cfg, task, workdir)
    print(report.comparison_table(out, cfg.paper.to_dict() or None))
    return out
  results = trainer.fit(cfg, task, workdir, resume=resume)
  table = report.comparison_table(results, cfg.paper.to_dict() or None)
  history = trainer.RunLog(wd).history()
  report.plot_curve(history, wd / "val_ndcg10.png")
  (wd / "report.md").write_text(report.run_summary(wd) + "\n")
  print(table)
  return results
