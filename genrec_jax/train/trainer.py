"""Fit / evaluate loop for sequential recommenders.

The train step is one jitted pure function of (state, batch, key) over a `jax.sharding.Mesh`
('data', 'model') built from cfg.mesh (train/mesh.py): batch sharded on 'data', parameters
replicated unless cfg.mesh.rules split them (the item table's rows over 'model'). Its PRNG key
is fold_in(seed, step) and batch k is a pure function of (seed, k), so a run resumed from a
checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genrec_jax import distributed, losses, metrics, sharded
from genrec_jax.config import ConfigError
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples, Split
from genrec_jax.models.sequential import SequentialRecommender, build_model
from genrec_jax.train import loop, mesh as mesh_lib
from genrec_jax.train.checkpoint import Checkpoints

Array = jax.Array
State = dict[str, Any]  # {'params', 'opt_state', 'step'}
# infonce: HLLM (losses.infonce_loss); bce: the original SASRec (one negative per position)
LOSSES = ("sampled_softmax", "full_softmax", "infonce", "bce")
MODEL_KEYS = ("ids", "targets", "ts_key", "ts_query", "pos", "seg")  # what the model reads


@dataclasses.dataclass(frozen=True)
class Task:
  """Everything the loop needs to know about the data."""

  split: Split
  catalog: np.ndarray  # int ids that are ranked and sampled
  num_items: int  # item table rows
  item_text_emb: np.ndarray | None = None  # [num_items, 384] frozen text embeddings ('text' item features)
  train_catalog: np.ndarray | None = None  # ids training may sample as negatives (default: catalog)
  test_subsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> test rows


def make_mesh(cfg: ml_collections.ConfigDict | None = None) -> Mesh:
  """The ('data', 'model') mesh of cfg.mesh over all devices (train/mesh.py); without a config
  (or cfg.mesh), data-parallel over all of them: (devices, 1)."""
  return mesh_lib.build_mesh(cfg)


def check_divisible(cfg: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Batches are split over the mesh's 'data' axis: padded batches need sizes divisible by it
  (packed batches have a multiple of 8 rows). A row-sharded item table needs a model it covers."""
  if mesh_lib.items_sharded(cfg, mesh):
    mesh_lib.check_sharded_model(cfg)
  n = mesh.shape["data"]
  if cfg.data.pack or n == 1:
    return
  for key in ("batch_size", "eval_batch_size"):
    if cfg.train[key] % n:
      raise ConfigError(
          f"train.{key}={cfg.train[key]} is not divisible by the {n} devices the batch is split "
          f"over (mesh 'data' axis, data.pack=False); change it, or set GENREC_HOST_DEVICES=1 on CPU"
      )


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = cfg.train
  return with_grad_clip(cfg, optax.adamw(t.learning_rate, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))


def with_grad_clip(cfg: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """g <- g · min(1, c / ‖g‖₂) over all parameters before `tx` when train.grad_clip_norm = c > 0."""
  c = cfg.train.get("grad_clip_norm", 0.0)
  if c < 0:
    raise ConfigError(f"train.grad_clip_norm must be >= 0 (0 = off), got {c}")
  return optax.chain(optax.clip_by_global_norm(c), tx) if c > 0 else tx


def _init_fn(model: SequentialRecommender, tx, cfg) -> Callable[[Array], State]:
  n = cfg.data.max_seq_len
  dummy = {k: jnp.zeros((1, n), jnp.int32) for k in MODEL_KEYS}

  def init(key: Array) -> State:
    params = model.init({"params": key}, dummy)["params"]
    if cfg.loss.name == "infonce":  # HLLM's learnable logit scale θ, owned by the loss
      params = {**params, losses.LOGIT_SCALE: jnp.asarray(losses.LOGIT_SCALE_INIT, jnp.float32)}
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  return init


def state_shardings(model: SequentialRecommender, tx, cfg, mesh: Mesh) -> Any:
  """NamedShardings of the train state: the model's PARAM_AXES through cfg.mesh.rules (params and
  their Adam moments alike), everything else replicated."""
  abstract = jax.eval_shape(_init_fn(model, tx, cfg), jax.random.key(0))
  return mesh_lib.state_shardings(abstract, getattr(model, "PARAM_AXES", {}), cfg, mesh)


def init_state(model: SequentialRecommender, tx, cfg, key: Array, mesh: Mesh | None = None) -> State:
  """{'params', 'opt_state', 'step'}. With a mesh, every array is created under jit directly in
  its NamedSharding (`state_shardings`): a row-sharded table never exists whole on one device."""
  init = _init_fn(model, tx, cfg)
  if mesh is None:
    return jax.jit(init)(key)
  if mesh_lib.items_sharded(cfg, mesh) and model.num_items % mesh.shape["model"]:
    raise ConfigError(f"the item table has {model.num_items} rows, not a multiple of mesh.model="
                      f"{mesh.shape['model']}; build the model with mesh.table_rows(num_items, cfg, mesh)")
  return jax.jit(init, out_shardings=state_shardings(model, tx, cfg, mesh))(key)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg: ml_collections.ConfigDict) -> Any:
  """The dtype of cfg.train.compute_dtype ('float32' | 'bfloat16')."""
  name = cfg.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"unknown train.compute_dtype {name!r}; expected one of {tuple(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def cast_floats(tree: Any, dtype: Any) -> Any:
  """`tree` with its floating-point leaves in `dtype` (integers untouched).

  Mixed precision: the step differentiates through this cast, so the model runs on a bf16 copy
  while the gradient (the cast's transpose) and the Adam update stay float32 master weights."""
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast, tree)


def make_loss_fn(model: SequentialRecommender, cfg, catalog: Array, mesh: Mesh | None = None) -> Callable:
  """(params, batch, key) -> loss. When cfg.mesh row-shards the item table over `mesh`, the
  softmax losses score it in place with explicit collectives (genrec_jax/sharded.py). With
  train.compute_dtype='bfloat16' the model sees a bf16 copy of the float32 params (`cast_floats`)."""
  lc = cfg.loss
  items_mesh = mesh if mesh_lib.items_sharded(cfg, mesh) else None
  if items_mesh is not None:
    mesh_lib.check_sharded_model(cfg)
  dtype = compute_dtype(cfg)
  chunk = lc.get("chunk", losses.CHUNK)
  if not isinstance(chunk, int) or chunk < 0:
    raise ConfigError(f"loss.chunk must be an int >= 0 (0 = all tokens at once), got {chunk!r}")

  def loss_fn(params, batch, key):
    if dtype != jnp.float32:
      params = cast_floats(params, dtype)
    k_drop, k_neg = jax.random.split(key)
    user_BxNxD = model.apply(
        {"params": params}, batch, deterministic=False, rngs={"dropout": k_drop}
    )
    table_VxD = model.apply({"params": params}, method=model.item_table)
    targets_BxN = batch["targets"]
    if lc.name == "sampled_softmax":
      offs = losses.sample_negatives(k_neg, targets_BxN.shape, lc.num_negatives, catalog.shape[0])
      if items_mesh is not None:  # the same loss; 'impl' does not apply (always a local gather)
        return sharded.sampled_softmax_loss(
            user_BxNxD, targets_BxN, table_VxD, catalog, offs, lc.temperature, items_mesh
        )
      return sharded.data_parallel_loss(
          lambda t, u, o, tab: losses.sampled_softmax_loss(
              u, t, tab, catalog, o, lc.temperature, impl=lc.impl, chunk=chunk),
          mesh, targets_BxN, (user_BxNxD, offs), (table_VxD,),
      )
    if lc.name == "full_softmax":
      if items_mesh is not None:  # softmax over the catalog = the rows marked in candidate_V
        candidate_V = jnp.zeros((table_VxD.shape[0],), bool).at[catalog].set(True)
        return sharded.full_softmax_loss(
            user_BxNxD, targets_BxN, table_VxD, candidate_V, lc.temperature, items_mesh
        )
      return sharded.data_parallel_loss(
          lambda t, u, tab: losses.full_softmax_loss(u, t, tab, catalog, lc.temperature, chunk),
          mesh, targets_BxN, (user_BxNxD,), (table_VxD,),
      )
    if lc.name == "infonce":
      # HLLM: one pool of K negatives, uniform over the catalog, shared by every position.
      offs_K = jax.random.randint(k_neg, (lc.num_negatives,), 0, catalog.shape[0])
      weights_BxN = (targets_BxN != 0).astype(user_BxNxD.dtype)
      return losses.infonce_loss(
          user_BxNxD, table_VxD[targets_BxN], table_VxD[catalog[offs_K]], weights_BxN,
          params[losses.LOGIT_SCALE], lc.get("nce_threshold", losses.NCE_THRESHOLD),
      )
    if lc.name == "bce":
      if items_mesh is not None:
        raise ConfigError("loss.name='bce' has no row-sharded item table path; use mesh.model=1")
      offs_BxN = jax.random.randint(k_neg, targets_BxN.shape, 0, catalog.shape[0])
      return losses.bce_loss(user_BxNxD, targets_BxN, table_VxD, catalog[offs_BxN], lc.temperature)
    raise ConfigError(f"unknown loss {lc.name!r}; expected one of {LOSSES}")

  return loss_fn


def make_train_step(model, tx, cfg, catalog: Array, mesh: Mesh) -> Callable:
  """Jitted, state-donating (state, batch) -> (state, loss); the state keeps the shardings of
  `state_shardings` (replicated unless cfg.mesh.rules split a param)."""
  loss_fn = make_loss_fn(model, cfg, catalog, mesh)
  base_key = jax.random.key(cfg.seed, impl=cfg.train.rng_impl)
  replicated = NamedSharding(mesh, P())
  state_sharding = state_shardings(model, tx, cfg, mesh)

  def step(state: State, batch: dict[str, Array]) -> tuple[State, Array]:
    key = jax.random.fold_in(base_key, state["step"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    params = losses.project_logit_scale(params)  # HLLM clamps θ to [0, ln 100] (no-op without θ)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

  return jax.jit(step, donate_argnums=(0,), out_shardings=(state_sharding, replicated))


def make_rank_fn(model, catalog: np.ndarray, num_items: int, mesh: Mesh | None = None, cfg=None) -> Callable:
  """Jitted (params, eval batch) -> 1-based full-ranking rank of each user's target [U].

  num_items: rows of the item table. When cfg.mesh row-shards the table over `mesh`, the ranks are
  counted per block and psum'd (genrec_jax/sharded.py)."""
  items_mesh = mesh if mesh_lib.items_sharded(cfg, mesh) else None
  candidate_V = np.zeros((num_items,), bool)
  candidate_V[catalog] = True
  candidate_V = jnp.asarray(candidate_V)

  @jax.jit
  def rank(params, batch):
    model_batch = {k: batch[k] for k in MODEL_KEYS}
    user_RxNxD = model.apply({"params": params}, model_batch, deterministic=True)
    user_UxD = user_RxNxD[batch["user_row"], batch["user_last"]]
    table_VxD = model.apply({"params": params}, method=model.item_table)
    if items_mesh is not None:
      return sharded.target_ranks(
          user_UxD, batch["target"], batch["history"], table_VxD, candidate_V, items_mesh
      )
    return metrics.target_ranks(user_UxD, batch["target"], batch["history"], table_VxD, candidate_V)

  return rank


def to_device(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
  """This process's rows of a batch (`distributed.data_shard`; all rows for one process) ->
  global arrays sharded on 'data'."""
  out = {}
  for k, v in batch.items():
    if v.dtype == np.int64:
      if len(v) and (v.max() >= 2**31 or v.min() < -(2**31)):
        raise ValueError(f"batch field {k!r} does not fit int32")
      v = v.astype(np.int32)
    out[k] = v
  return distributed.global_batch(out, mesh)


EvalBatches = list[tuple[dict[str, Array], int]]


def eval_batches(examples: Examples, cfg: ml_collections.ConfigDict, mesh: Mesh) -> EvalBatches:
  """Evaluation batches built once and kept on the device(s) for every later evaluation
  (each process holds its block of rows and users of every batch)."""
  shard = distributed.data_shard(mesh)
  host = pipeline.eval_batches(examples, cfg.train.eval_batch_size, packed=cfg.data.pack,
                               row_multiple=pipeline.row_multiple(shard[2]), shard=shard)
  return [(to_device(batch, mesh), n) for batch, n in host]


def evaluate(rank_fn, params, batches: EvalBatches) -> dict[str, float]:
  """Metrics over all users; every process gathers the ranks of all of them (same result)."""
  acc = metrics.RankingAccumulator()
  for batch, n in batches:
    acc.add(distributed.to_host(rank_fn(params, batch))[:n])
  return acc.result()


def fit(cfg: ml_collections.ConfigDict, task: Task, workdir: str, resume: bool = False) -> dict:
  """Trains with per-epoch validation, keeps the best checkpoint, evaluates test once."""
  t_start = time.time()
  mesh = make_mesh(cfg)  # mesh and model config errors surface before anything is written
  check_divisible(cfg, mesh)
  rows = mesh_lib.table_rows(task.num_items, cfg, mesh)  # + padding rows when the table is row-sharded
  model = build_model(cfg, rows, task.item_text_emb)
  if cfg.loss.name not in LOSSES:
    raise ConfigError(f"unknown loss {cfg.loss.name!r}; expected one of {LOSSES}")
  split = task.split
  selection = loop.Selection("val" if split.val is not None else "test", cfg.train.select_metric)
  tx = make_optimizer(cfg)
  train_catalog = task.catalog if task.train_catalog is None else task.train_catalog
  catalog = jnp.asarray(train_catalog, jnp.int32)
  state = init_state(model, tx, cfg, jax.random.key(cfg.seed), mesh)
  train_step = make_train_step(model, tx, cfg, catalog, mesh)
  rank_fn = make_rank_fn(model, task.catalog, rows, mesh, cfg)
  selection_batches = eval_batches(split.val if split.val is not None else split.test, cfg, mesh)

  bs = cfg.train.batch_size
  spe = pipeline.steps_per_epoch(len(split.train), bs)
  total_steps = spe * cfg.train.num_epochs
  shard = distributed.data_shard(mesh)  # each process builds its rows of every global batch
  data_iter = pipeline.train_iterator(split.train, bs, cfg.seed, total_steps, packed=cfg.data.pack,
                                      shard=shard, rows_multiple=pipeline.row_multiple(shard[2]),
                                      stochastic_length_alpha=cfg.data.get("stochastic_length_alpha", 0.0))
  run, state = loop.open_run(workdir, resume, state, selection, t_start, data_iter=data_iter,
                             shardings=state_shardings(model, tx, cfg, mesh))

  def step(state: State, i: int) -> tuple[State, Array]:
    state, loss = train_step(state, to_device(next(data_iter), mesh))
    # One step in flight at a time: with several CPU devices, a step dispatched while the
    # previous one still runs can starve XLA:CPU's all-reduce rendezvous of threads and
    # deadlock (seen with 2 host devices on 2 cores). The next batch is prefetched by grain.
    jax.block_until_ready(state)
    return state, loss

  def train_epoch(state: State, epoch: int) -> tuple[State, dict[str, float]]:
    state, train_loss = loop.train_steps(state, step, spe, epoch, cfg.train.num_epochs)
    return state, {"train_loss": train_loss}

  state = loop.epoch_loop(run, state, cfg.train.num_epochs, train_epoch,
                          lambda s: evaluate(rank_fn, s["params"], selection_batches),
                          patience=cfg.train.patience, show=loop.ndcg_hr)

  # Test once, on the selected checkpoint.
  best_state, best_meta = run.restore_best(state)
  params = best_state["params"]
  val = evaluate(rank_fn, params, selection_batches) if split.val is not None else None
  test = evaluate(rank_fn, params, eval_batches(split.test, cfg, mesh))
  subsets = _evaluate_test_subsets(rank_fn, params, task, cfg, mesh)
  return run.write_results(cfg, split.protocol, best_meta, val, test, **subsets)


def _evaluate_test_subsets(rank_fn, params, task: Task, cfg, mesh) -> dict[str, dict[str, float]]:
  """{'test_<name>': metrics over the test users of each named subset} (e.g. cold / warm)."""
  return {
      f"test_{name}": evaluate(rank_fn, params, eval_batches(task.split.test.subset(rows), cfg, mesh))
      for name, rows in task.test_subsets.items()
  }


def evaluate_checkpoint(cfg, task: Task, workdir: str, which: str = "best") -> dict:
  """Reloads a checkpoint and reports validation and test metrics (eval-only mode)."""
  mesh = make_mesh(cfg)
  check_divisible(cfg, mesh)
  rows = mesh_lib.table_rows(task.num_items, cfg, mesh)
  model = build_model(cfg, rows, task.item_text_emb)
  tx = make_optimizer(cfg)
  state = init_state(model, tx, cfg, jax.random.key(cfg.seed), mesh)  # restored into these shardings
  ckpt = Checkpoints(workdir)
  state, meta = ckpt.restore(which, state)
  ckpt.close()
  rank_fn = make_rank_fn(model, task.catalog, rows, mesh, cfg)
  split = task.split
  out = {
      "checkpoint": which,
      "epoch": meta["epoch"],
      "val": evaluate(rank_fn, state["params"], eval_batches(split.val, cfg, mesh)) if split.val is not None else None,
      "test": evaluate(rank_fn, state["params"], eval_batches(split.test, cfg, mesh)),
      **_evaluate_test_subsets(rank_fn, state["params"], task, cfg, mesh),
  }
  loop.write_json_atomic(pathlib.Path(workdir) / "eval.json", out)
  return out
