"""Training loop of the multi-task hybrid (models/multitask.py), composed from registries.

Tasks are switched on and weighted in the config (`multitask_fields`):
  L = Σ_{h on} λ_h L_h,   h ∈ {retrieval, rating, liked}
each L_h is looked up by name in `HEAD_LOSSES[h]` (cfg.tasks.h.loss), so a new loss is one
`register_loss` call (docs/extending.md). A head that is off is not computed at all: it adds
nothing to L and its parameters (not even built) get no gradient.

Built-in losses, averaged over the positions whose next event is known:
  retrieval 'sampled_softmax'  losses.sampled_softmax_loss on the (blended) retrieval vectors
  rating    'mse'              (r̂ − r)²
  liked     'bce'              −y log σ(ℓ) − (1 − y) log(1 − σ(ℓ)),  y = [r ≥ 4]

Evaluation (per epoch on val, once on test with the best checkpoint), over each user's held-out
event (protocol 'loo': val = second-to-last event, test = last event; both have a known rating):
  retrieval  full-ranking HR@k / NDCG@k / MRR of the held-out item (metrics.target_ranks)
  rating     RMSE / MAE of r̂ (clipped to [1, 5]) against its rating
  liked      AUC / logloss of σ(ℓ) against [rating ≥ 4]
Metrics of heads that are off are null in results.json. The best epoch is chosen on the first
head that is on, in the order retrieval (val NDCG@10), rating (val RMSE), liked (val AUC).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from genrec_jax import distributed, losses, metrics, rating_metrics
from genrec_jax.config import ConfigError
from genrec_jax.data import pipeline, ratings
from genrec_jax.models.multitask import MultiTaskRecommender, build_multitask_model
from genrec_jax.train import loop, trainer

Array = jax.Array
TASKS = ("retrieval", "rating", "liked")
# task -> (selection metric, larger is better)
SELECT = {"retrieval": ("ndcg@10", True), "rating": ("rmse", False), "liked": ("auc", True)}
RATING_RANGE = (1.0, 5.0)


def multitask_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the task switches / weights, head and CF-tower fields to a sequential_config()."""
  c.tasks = ml_collections.ConfigDict()
  for name, loss in (("retrieval", "sampled_softmax"), ("rating", "mse"), ("liked", "bce")):
    c.tasks[name] = ml_collections.ConfigDict({"on": True, "weight": 1.0, "loss": loss})
  c.heads = ml_collections.ConfigDict({"hidden": 64})
  # CF tower: MF user/item vectors of `dim`, blended with weight w into the retrieval score
  # ('learned': w = σ(β), β initialised so that w = `weight`; 'fixed': w = `weight`).
  c.cf = ml_collections.ConfigDict({"on": False, "dim": 32, "blend": "learned", "weight": 0.9})
  return c


# ---- losses by name -------------------------------------------------------------------------
# A loss reads the head outputs `out` (only those of the tasks that are on) and the batch:
#   out['query_BxNxQ'], out['table_VxQ']   retrieval vectors (score = <q, k> / τ)
#   out['rating_BxN']                      r̂ at every position
#   out['liked_logit_BxN']                 ℓ at every position
#   batch['targets'] (next item, 0 = none), batch['target_rating'] (rating code 2r, 0 = none)

LossFn = Callable[[dict[str, Array], dict[str, Array], Array, ml_collections.ConfigDict, Array], Array]


def target_rating(batch: dict[str, Array]) -> Array:
  """Ratings of the next events, [B, N] float (0 = none), from the 2r codes of data/ratings.py."""
  return batch["target_rating"].astype(jnp.float32) / 2.0


def rating_weights(batch: dict[str, Array]) -> Array:
  return (batch["target_rating"] > 0).astype(jnp.float32)


def weighted_mean(loss_BxN: Array, weights_BxN: Array) -> Array:
  return jnp.sum(loss_BxN * weights_BxN) / jnp.maximum(jnp.sum(weights_BxN), 1.0)


def sampled_softmax_task_loss(out, batch, key, cfg, catalog_C):
  offs = losses.sample_negatives(key, batch["targets"].shape, cfg.loss.num_negatives, catalog_C.shape[0])
  return losses.sampled_softmax_loss(out["query_BxNxQ"], batch["targets"], out["table_VxQ"], catalog_C,
                                     offs, cfg.loss.temperature, impl=cfg.loss.impl)


def mse_loss(out, batch, key, cfg, catalog_C):
  del key, cfg, catalog_C
  err_BxN = out["rating_BxN"] - target_rating(batch)
  return weighted_mean(jnp.square(err_BxN), rating_weights(batch))


def liked_bce_loss(out, batch, key, cfg, catalog_C):
  del key, cfg, catalog_C
  y_BxN = (target_rating(batch) >= ratings.LIKED_THRESHOLD).astype(jnp.float32)
  return weighted_mean(optax.sigmoid_binary_cross_entropy(out["liked_logit_BxN"], y_BxN), rating_weights(batch))


HEAD_LOSSES: dict[str, dict[str, Callable]] = {
    "retrieval": {"sampled_softmax": sampled_softmax_task_loss},
    "rating": {"mse": mse_loss},
    "liked": {"bce": liked_bce_loss},
}


def register_loss(task: str, name: str, fn: Callable) -> None:
  """Makes `fn(out, batch, key, cfg, catalog_C) -> scalar` available as cfg.tasks.<task>.loss=name."""
  if task not in HEAD_LOSSES:
    raise ConfigError(f"unknown task {task!r}; expected one of {TASKS}")
  HEAD_LOSSES[task][name] = fn


def active_tasks(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tasks that are on, after checking their names, weights and losses."""
  unknown = set(cfg.tasks.keys()) - set(TASKS)
  if unknown:
    raise ConfigError(f"unknown tasks {sorted(unknown)}; expected some of {TASKS}")
  on = tuple(t for t in TASKS if cfg.tasks[t].on)
  if not on:
    raise ConfigError("every task is off; turn one on, e.g. --config.tasks.retrieval.on=True")
  for t in on:
    if cfg.tasks[t].weight < 0:
      raise ConfigError(f"tasks.{t}.weight must be >= 0, got {cfg.tasks[t].weight}")
    if cfg.tasks[t].loss not in HEAD_LOSSES[t]:
      raise ConfigError(f"unknown tasks.{t}.loss {cfg.tasks[t].loss!r}; known: {sorted(HEAD_LOSSES[t])}")
  return on


def head_outputs(model: MultiTaskRecommender, params, batch, tasks, deterministic: bool, rngs=None):
  """The outputs of the heads of `tasks` at every position (keys in the loss comment above)."""
  user_BxNxD = model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)
  out = {}
  if "retrieval" in tasks:
    user_idx = batch["user"] - 1 if model.cf_dim else None  # user codes are index + 1
    q, k = model.apply({"params": params}, user_BxNxD, user_idx, method=model.retrieval_vectors)
    out["query_BxNxQ"], out["table_VxQ"] = q, k
  if "rating" in tasks:
    out["rating_BxN"] = model.apply({"params": params}, user_BxNxD, batch["targets"], method=model.rating)
  if "liked" in tasks:
    out["liked_logit_BxN"] = model.apply({"params": params}, user_BxNxD, batch["targets"],
                                         method=model.liked_logit)
  return out


def make_loss_fn(model: MultiTaskRecommender, cfg, catalog_C: Array) -> Callable:
  """(params, batch, key) -> (L, {task: L_task}) with L = Σ_{h on} λ_h L_h."""
  tasks = active_tasks(cfg)

  def loss_fn(params, batch, key):
    k_drop, k_loss = jax.random.split(key)
    out = head_outputs(model, params, batch, tasks, deterministic=False, rngs={"dropout": k_drop})
    parts = {}
    for i, t in enumerate(tasks):
      fn = HEAD_LOSSES[t][cfg.tasks[t].loss]
      parts[t] = fn(out, batch, jax.random.fold_in(k_loss, i), cfg, catalog_C)
    total = sum(cfg.tasks[t].weight * parts[t] for t in tasks)
    return total, parts

  return loss_fn


def init_state(model: MultiTaskRecommender, tx, cfg, key: Array) -> dict[str, Any]:
  n = cfg.data.max_seq_len
  dummy = {k: jnp.zeros((1, n), jnp.int32) for k in (*trainer.MODEL_KEYS, "user")}

  def init(key):
    params = model.init({"params": key}, dummy, method=model.init_all)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  return jax.jit(init)(key)


def make_train_step(model, tx, cfg, catalog_C: Array, mesh) -> Callable:
  loss_fn = make_loss_fn(model, cfg, catalog_C)
  base_key = jax.random.key(cfg.seed, impl=cfg.train.rng_impl)
  replicated = NamedSharding(mesh, P())

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, (loss, parts)

  return jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))


def make_eval_fn(model: MultiTaskRecommender, tasks, catalog: np.ndarray, num_items: int) -> Callable:
  """Jitted (params, eval batch) -> {'rank', 'rating', 'liked_prob'} per user slot (heads on)."""
  candidate_V = np.zeros((num_items,), bool)
  candidate_V[catalog] = True
  candidate_V = jnp.asarray(candidate_V)

  @jax.jit
  def evaluate(params, batch):
    model_batch = {k: batch[k] for k in trainer.MODEL_KEYS}
    user_RxNxD = model.apply({"params": params}, model_batch, deterministic=True)
    user_UxD = user_RxNxD[batch["user_row"], batch["user_last"]]
    out = {}
    if "retrieval" in tasks:
      user_idx = batch["user"] - 1 if model.cf_dim else None
      q_UxQ, k_VxQ = model.apply({"params": params}, user_UxD, user_idx, method=model.retrieval_vectors)
      out["rank"] = metrics.target_ranks(q_UxQ, batch["target"], batch["history"], k_VxQ, candidate_V)
    if "rating" in tasks:
      r = model.apply({"params": params}, user_UxD, batch["target"], method=model.rating)
      out["rating"] = jnp.clip(r, *RATING_RANGE)
    if "liked" in tasks:
      out["liked_prob"] = jax.nn.sigmoid(
          model.apply({"params": params}, user_UxD, batch["target"], method=model.liked_logit))
    return out

  return evaluate


def evaluate(eval_fn, params, batches, tasks) -> dict[str, Any]:
  """All metrics over the users of `batches`; null for the heads that are off."""
  ranks, preds, probs, true = [], [], [], []
  for batch, n in batches:
    out = jax.tree.map(lambda x: distributed.to_host(x)[:n], eval_fn(params, batch))
    true.append(distributed.to_host(batch["target_rating"])[:n] / 2.0)
    ranks.append(out.get("rank", np.zeros(0)))
    preds.append(out.get("rating", np.zeros(0)))
    probs.append(out.get("liked_prob", np.zeros(0)))
  r_true = np.concatenate(true)
  res: dict[str, Any] = {"hr@10": None, "ndcg@10": None, "rmse": None, "mae": None, "auc": None, "logloss": None}
  if "retrieval" in tasks:
    res.update(metrics.metrics_from_ranks(np.concatenate(ranks)))
  if "rating" in tasks:
    pred = np.concatenate(preds)
    res.update(rmse=rating_metrics.rmse(pred, r_true), mae=rating_metrics.mae(pred, r_true))
  if "liked" in tasks:
    prob, liked = np.concatenate(probs), r_true >= ratings.LIKED_THRESHOLD
    res.update(auc=rating_metrics.auc(prob, liked), logloss=rating_metrics.logloss(prob, liked))
  res["num_users"] = len(r_true)
  return res


def _aux(ex, rx) -> dict:
  return {"target_rating": ratings.with_targets(ex, ratings.rating_codes(rx)),
          "user": ratings.with_targets(ex, ratings.user_codes(ex, rx))}


def _eval_batches(ex, rx, cfg, mesh) -> trainer.EvalBatches:
  shard = distributed.data_shard(mesh)
  host = ratings.aux_eval_batches(ex, _aux(ex, rx), cfg.train.eval_batch_size, cfg.data.pack,
                                  pipeline.row_multiple(shard[2]), shard)
  return [(trainer.to_device(b, mesh), n) for b, n in host]


def fit(cfg: ml_collections.ConfigDict, task: trainer.Task, rated: ratings.RatedSplit, workdir: str,
        resume: bool = False) -> dict:
  """Trains all heads that are on, validates after every epoch, tests the best checkpoint once."""
  t_start = time.time()
  tasks = active_tasks(cfg)
  mesh = trainer.make_mesh(cfg)
  trainer.check_divisible(cfg, mesh)
  if trainer.mesh_lib.items_sharded(cfg, mesh):
    raise ConfigError("the multi-task loop has no row-sharded item table path; use mesh.model=1")
  split = task.split
  train_r = rated.train.rating_UxN[split.train.targets_UxN != 0]
  model = build_multitask_model(cfg, task.num_items, len(split.train), float(np.mean(train_r)))
  sel_metric, larger_better = SELECT[tasks[0]]
  selection = loop.Selection("val" if split.val is not None else "test", sel_metric, larger_better)
  tx = trainer.make_optimizer(cfg)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(init_state(model, tx, cfg, jax.random.key(cfg.seed)), replicated)
  catalog = jnp.asarray(task.catalog if task.train_catalog is None else task.train_catalog, jnp.int32)
  train_step = make_train_step(model, tx, cfg, catalog, mesh)
  eval_fn = make_eval_fn(model, tasks, task.catalog, task.num_items)
  sel_ex, sel_rx = (split.val, rated.val) if split.val is not None else (split.test, rated.test)
  selection_batches = _eval_batches(sel_ex, sel_rx, cfg, mesh)

  bs = cfg.train.batch_size
  spe = pipeline.steps_per_epoch(len(split.train), bs)
  shard = distributed.data_shard(mesh)
  data_iter = ratings.aux_train_iterator(
      split.train, _aux(split.train, rated.train), bs, cfg.seed, spe * cfg.train.num_epochs,
      cfg.data.pack, shard, pipeline.row_multiple(shard[2]))
  run, state = loop.open_run(workdir, resume, state, selection, t_start, data_iter=data_iter,
                             shardings=replicated)

  def train_epoch(state, epoch: int) -> tuple[Any, dict[str, Any]]:
    parts_dev = []

    def step(state, i: int):
      state, (loss, parts) = train_step(state, trainer.to_device(next(data_iter), mesh))
      jax.block_until_ready(state)  # one step in flight (see trainer.fit)
      parts_dev.append(parts)
      return state, loss

    state, train_loss = loop.train_steps(state, step, spe, epoch, cfg.train.num_epochs)
    parts_host = jax.device_get(parts_dev)
    return state, {"train_loss": train_loss,
                   "train_task_loss": {t: float(np.mean([p[t] for p in parts_host])) for t in tasks}}

  def evaluate_selection(state) -> dict[str, Any]:
    """The metrics of the heads that are on."""
    res = evaluate(eval_fn, state["params"], selection_batches, tasks)
    return {k: v for k, v in res.items() if v is not None}

  def show(res: dict[str, Any]) -> str:
    return "  ".join(f"{k} {res[k]:.4f}" for k in TABLE_COLUMNS if k in res)

  state = loop.epoch_loop(run, state, cfg.train.num_epochs, train_epoch, evaluate_selection,
                          patience=cfg.train.patience, show=show)
  best_state, best_meta = run.restore_best(state)
  val = evaluate(eval_fn, best_state["params"], selection_batches, tasks) if split.val is not None else None
  test = evaluate(eval_fn, best_state["params"], _eval_batches(split.test, rated.test, cfg, mesh), tasks)
  blend = None
  if model.cf_dim:
    blend = float(model.apply({"params": best_state["params"]}, method=model.blend_w))
  return run.write_results(cfg, split.protocol, best_meta, val, test,
                           tasks={t: cfg.tasks[t].weight for t in tasks}, cf_blend_weight=blend)


def run(cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool, eval_only: bool) -> dict:
  """Recipe for experiments: MovieLens with ratings -> fit -> a one-line table of all metrics."""
  if eval_only:
    raise ConfigError("--eval_only is not available for the multi-task experiment")
  task, rated = ratings.load_rated_task(cfg, data_dir)
  results = fit(cfg, task, rated, workdir, resume=resume)
  if distributed.is_main_process():
    print(results_table([results]))
  return results


TABLE_COLUMNS = ("hr@10", "ndcg@10", "rmse", "mae", "auc", "logloss")


def results_table(results: list[dict]) -> str:
  """Markdown: one row per run, test metrics, '–' for heads that are off."""
  lines = ["| tasks (weights) | " + " | ".join(TABLE_COLUMNS) + " | best epoch |",
           "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
  for r in results:
    t = r["test"]
    cells = [f"{t[c]:.4f}" if t.get(c) is not None else "–" for c in TABLE_COLUMNS]
    name = ", ".join(f"{k} {v:g}" for k, v in r["tasks"].items())
    if r.get("cf_blend_weight") is not None:
      name += f" + CF (w={r['cf_blend_weight']:.3f})"
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['best_epoch']} |")
  return "\n".join(lines)
