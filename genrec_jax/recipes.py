"""End-to-end recipes that experiment files call: data -> fit -> results and report."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping

import ml_collections

from genrec_jax import distributed, report
from genrec_jax.config import ConfigError
from genrec_jax.data import text
from genrec_jax.data.registry import load_task
from genrec_jax.models import hllm as hllm_models
from genrec_jax.train import loop, trainer


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
    if distributed.is_main_process():
      print(report.comparison_table(out, cfg.paper.to_dict() or None))
    return out
  results = trainer.fit(cfg, task, workdir, resume=resume)
  if not distributed.is_main_process():  # process 0 writes the report and prints
    return results
  table = report.comparison_table(results, cfg.paper.to_dict() or None)
  history = loop.RunLog(wd).history()
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


def run_hllm(cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool,
             eval_only: bool) -> dict:
  """Data -> item texts -> (frozen: cached item embeddings + trainer.fit | e2e: train/hllm.py)."""
  mode = cfg.hllm.mode
  if mode not in ("frozen", "e2e"):
    raise ConfigError(f"unknown hllm.mode {mode!r}; expected 'frozen' or 'e2e'")
  if mode == "frozen" and cfg.model.name != "hllm" and cfg.model.get("item_features") == "id":
    raise ConfigError(f"model.name={cfg.model.name!r} over frozen item-LLM embeddings needs "
                      f"--config.model.item_features=text (or id+text)")
  task = load_task(cfg, data_dir)
  texts = hllm_models.hllm_item_texts(cfg, data_dir, task.num_items)
  wd = pathlib.Path(workdir)
  if mode == "e2e":
    if eval_only:
      raise ConfigError("--eval_only is available for hllm.mode='frozen' only")
    from genrec_jax.train import hllm as hllm_train  # pylint: disable=g-import-not-at-top

    results = hllm_train.fit_e2e(cfg, task, texts, workdir, resume=resume)
  else:
    emb = hllm_models.frozen_item_embeddings(texts, cfg.hllm, cfg.seed)
    if cfg.hllm.standardize:
      emb = hllm_models.standardize_items(emb)
    task = dataclasses.replace(task, item_text_emb=emb)
    if eval_only:
      out = trainer.evaluate_checkpoint(cfg, task, workdir)
      print(report.comparison_table(out, cfg.paper.to_dict() or None))
      return out
    results = trainer.fit(cfg, task, workdir, resume=resume)
  history = loop.RunLog(wd).history()
  report.plot_curve([r for r in history if "val" in r or "test" in r], wd / "val_ndcg10.png")
  (wd / "report.md").write_text(report.run_summary(wd) + "\n")
  print(report.comparison_table(results, cfg.paper.to_dict() or None))
  return results
