"""End-to-end recipes that experiment files call: data -> fit -> results and report."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping

import ml_collections

from genrec_jax import report
from genrec_jax.data import text
from genrec_jax.data.registry import load_task
from genrec_jax.train import trainer


def run_sequential(
    cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool, eval_only: bool
) -> dict:
  """Trains (or, with eval_only, re-evaluates) a sequential recommender and prints the table."""
  task = load_task(cfg, data_dir)
  text_emb = text.load_item_text_embeddings(cfg, data_dir, task.num_items)  # None for 'id' items
  task = dataclasses.replace(task, item_text_emb=text_emb)
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


def run_sequential_with_anchors(anchors: Mapping[str, Mapping[str, float]]) -> Callable[..., dict]:
  """`run_sequential` comparing against `anchors[cfg.data.dataset]` (none if not listed).

  The flag overrides (e.g. --config.data.dataset=amazon-sports) are applied after get_config(),
  so the published numbers of the dataset actually run can only be chosen here.
  """

  def run(cfg, workdir: str, data_dir: str, resume: bool, eval_only: bool) -> dict:
    with cfg.unlocked():
      cfg.paper = ml_collections.ConfigDict(dict(anchors.get(cfg.data.dataset, {})))
    return run_sequential(cfg, workdir, data_dir, resume, eval_only)

  return run
