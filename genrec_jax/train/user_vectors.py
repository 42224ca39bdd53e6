"""Fit / evaluate loop for models over whole user (or item) purchase vectors: Mult-VAE, CFGAN.

A model plugs in as an `Algorithm` (init, one training epoch, a scorer); `fit` runs the epochs,
evaluates the selection split (val, else test) every `train.eval_every` epochs, keeps Orbax
checkpoints (`latest` each evaluated epoch for --resume, `best` for the reported numbers) and writes
WORKDIR/results.json. Epoch e's data order is a pure function of (seed, e) and every PRNG key of a
step is fold_in(seed key, step), so a resumed run continues as an uninterrupted one would.

Evaluation (`evaluate`) scores each held-out user's fold-in vector and ranks all columns except
the user's excluded items: one target per user (leave-one-out) -> `metrics.metrics_from_ranks`
(hr@k, ndcg@k, mrr); a target set -> `metrics.topk_metrics` (recall@k, precision@k, ndcg@k).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genrec_jax import metrics
from genrec_jax.config import ConfigError
from genrec_jax.data.interactions import HeldOut, InteractionData, dense_rows
from genrec_jax.models import cfgan as cfgan_lib
from genrec_jax.models import vae as vae_lib
from genrec_jax.train import loop
from genrec_jax.train.checkpoint import Checkpoints

Array = jax.Array
State = dict[str, Any]
# (fold_in_BxI, train_row_B) -> scores_BxI; built once per evaluation from a state
Scorer = Callable[[np.ndarray, np.ndarray], Array]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """What the loop needs from a user-vector model."""

  init: Callable[[Array], State]  # PRNG key -> initial state (a pytree holding 'step')
  train_epoch: Callable[[State, int], tuple[State, dict[str, float]]]  # (state, epoch) -> state, logs
  scorer: Callable[[State], Scorer]


def _epoch_rng(seed: int, epoch: int, phase: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, phase])


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
  """A seeded permutation of range(n) cut into batches (the last one may be smaller)."""
  perm = rng.permutation(n)
  return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _scanned(step: Callable) -> Callable:
  """step(state, idx_B, *consts) -> (state, loss) turned into a pass over a list of index
  batches: the full-size batches run in one jitted lax.scan (no per-step dispatch), a smaller
  last batch in one more jitted step. Appends each batch's loss to `losses` (device arrays)."""

  @jax.jit
  def scan(state, idx_NxB, *consts):
    return jax.lax.scan(lambda s, idx: step(s, idx, *consts), state, idx_NxB)

  one = jax.jit(step)

  def run(state, batches: list[np.ndarray], losses: list, *consts):
    full = [b for b in batches if len(b) == len(batches[0])]
    if full:
      state, loss_N = scan(state, jnp.asarray(np.stack(full), jnp.int32), *consts)
      losses.append(loss_N)
    for b in batches[len(full):]:
      state, loss = one(state, jnp.asarray(b, jnp.int32), *consts)
      losses.append(loss[None])
    return state

  return run


# ----------------------------------------------------------------------------- evaluation ----


@jax.jit
def _loo_ranks(scores_BxI, target_BxI, exclude_BxI):
  return metrics.ranks_from_scores(scores_BxI, jnp.argmax(target_BxI, axis=1), exclude_BxI)


_topk = jax.jit(metrics.topk_metrics, static_argnums=(3,))


def evaluate(scorer: Scorer, held: HeldOut, ks: tuple[int, ...], batch_size: int,
             single_target: bool) -> dict[str, float]:
  """Mean metrics over the held-out users (module doc). Batches are zero-padded to
  `batch_size` rows so every batch has one compiled shape."""
  acc = metrics.RankingAccumulator() if single_target else metrics.MeanAccumulator()
  n = len(held)
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(rows)

    def dense(m, rows=rows, pad=pad):
      return np.pad(dense_rows(m, rows), ((0, pad), (0, 0)))

    scores = scorer(dense(held.fold_in_UxI), np.pad(held.train_row_U[rows], (0, pad)))
    target, exclude = dense(held.target_UxI) > 0, dense(held.exclude_UxI) > 0
    if single_target:
      acc.add(np.asarray(_loo_ranks(scores, target, exclude))[: len(rows)])
    else:
      out = _topk(scores, target, exclude, tuple(ks))
      acc.add({k: np.asarray(v)[: len(rows)] for k, v in out.items()})
  return acc.result()


def _single_target(data: InteractionData) -> bool:
  return data.protocol in ("loo", "paper")


# ------------------------------------------------------------------------------ the loop ----


def select_metric(cfg: ml_collections.ConfigDict, data: InteractionData) -> str:
  """cfg.train.select_metric, or by default ndcg@10 (leave-one-out) / ndcg@max(ks) (sets)."""
  name = cfg.train.get("select_metric", "")
  if name:
    return name
  return "ndcg@10" if _single_target(data) else f"ndcg@{max(cfg.eval.ks)}"


def fit(cfg: ml_collections.ConfigDict, data: InteractionData, alg: Algorithm, workdir: str,
        resume: bool = False) -> dict:
  """Trains `alg` on `data` with periodic validation, keeps the best state, tests it once."""
  t_start = time.time()
  selection = loop.Selection("val" if data.val is not None else "test", select_metric(cfg, data))
  sel_split = data.val if data.val is not None else data.test
  single = _single_target(data)
  ks = tuple(cfg.eval.ks)
  ebs = cfg.train.eval_batch_size
  run, state = loop.open_run(workdir, resume, alg.init(jax.random.key(cfg.seed)), selection, t_start)
  state = loop.epoch_loop(run, state, cfg.train.num_epochs, alg.train_epoch,
                          lambda s: evaluate(alg.scorer(s), sel_split, ks, ebs, single),
                          patience=cfg.train.get("patience", 0),
                          eval_every=max(1, cfg.train.get("eval_every", 1)), epochs_bar=cfg.model.name)
  best_state, best_meta = run.restore_best(state)
  scorer = alg.scorer(best_state)
  val = evaluate(scorer, data.val, ks, ebs, single) if data.val is not None else None
  test = evaluate(scorer, data.test, ks, ebs, single)
  return run.write_results(cfg, data.protocol, best_meta, val, test, data_stats=data_stats(data))


def evaluate_checkpoint(cfg, data: InteractionData, alg: Algorithm, workdir: str,
                        which: str = "best") -> dict:
  """Reloads a checkpoint and reports val/test metrics (WORKDIR/eval.json)."""
  ckpt = Checkpoints(workdir)
  state, meta = ckpt.restore(which, alg.init(jax.random.key(cfg.seed)))
  ckpt.close()
  scorer, single, ks = alg.scorer(state), _single_target(data), tuple(cfg.eval.ks)
  ebs = cfg.train.eval_batch_size
  out = {
      "checkpoint": which,
      "epoch": meta["epoch"],
      "val": evaluate(scorer, data.val, ks, ebs, single) if data.val is not None else None,
      "test": evaluate(scorer, data.test, ks, ebs, single),
  }
  loop.write_json_atomic(pathlib.Path(workdir) / "eval.json", out)
  return out


def data_stats(data: InteractionData) -> dict[str, int]:
  out = {"train_users": data.num_train_users, "items": data.num_items,
         "train_interactions": int(data.train_UxI.nnz), "test_users": len(data.test),
         "test_targets": int(data.test.target_UxI.nnz)}
  if data.val is not None:
    out.update(val_users=len(data.val), val_targets=int(data.val.target_UxI.nnz))
  return out


# ------------------------------------------------------------------------------- Mult-VAE ----


def vae_algorithm(cfg: ml_collections.ConfigDict, data: InteractionData) -> Algorithm:
  """Mult-VAE (models/vae.py): Adam, batches of users, linear KL annealing per update."""
  model = vae_lib.build_vae(cfg, data.num_items)
  t = cfg.train
  tx = optax.adam(t.learning_rate)
  base_key = jax.random.key(cfg.seed)
  train_UxI = jnp.asarray(data.train_UxI.toarray(), jnp.float32)  # on device, gathered per batch

  def init(key: Array) -> State:
    params = jax.jit(model.init)({"params": key}, jnp.zeros((1, data.num_items)))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  def step(state: State, idx_B: Array, train_UxI: Array) -> tuple[State, Array]:
    x_BxI = train_UxI[idx_B]
    k_drop, k_z = jax.random.split(jax.random.fold_in(base_key, state["step"]))
    beta = vae_lib.beta_schedule(state["step"], t.total_anneal_steps, t.beta_max)

    def loss_fn(params):
      logits, mu, logvar = model.apply({"params": params}, x_BxI, deterministic=False,
                                       rngs={"dropout": k_drop, "sample": k_z})
      nll = vae_lib.multinomial_nll(logits, x_BxI)
      kl = vae_lib.gaussian_kl(mu, logvar)
      return nll + beta * kl, (nll, kl)

    (loss, (nll, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, jnp.stack([loss, nll, kl, beta])

  train_pass = _scanned(step)

  def train_epoch(state: State, epoch: int) -> tuple[State, dict[str, float]]:
    batches = _batches(train_UxI.shape[0], t.batch_size, _epoch_rng(cfg.seed, epoch))
    out = []
    state = train_pass(state, batches, out, train_UxI)
    # per-batch means weighted by batch size = the epoch's mean over users
    sizes = np.array([len(b) for b in batches], np.float64)
    loss, nll, kl, beta = np.average(np.concatenate(jax.device_get(out)), axis=0, weights=sizes)
    return state, {"train_loss": float(loss), "nll": float(nll), "kl": float(kl), "beta": float(beta)}

  score = jax.jit(lambda params, x: model.apply({"params": params}, x, deterministic=True)[0])

  def scorer(state: State) -> Scorer:
    return lambda x_BxI, rows_B: score(state["params"], x_BxI)

  return Algorithm(init, train_epoch, scorer)


# ---------------------------------------------------------------------------------- CFGAN ----


def cfgan_algorithm(cfg: ml_collections.ConfigDict, data: InteractionData) -> Algorithm:
  """CFGAN (models/cfgan.py) as the authors' loop: each epoch samples the ZR / PM negatives once
  per row, then runs `d_steps` passes of D and `g_steps` passes of G over all rows."""
  m, t = cfg.model, cfg.train
  if m.mode not in cfgan_lib.MODES or m.scheme not in cfgan_lib.SCHEMES:
    raise ConfigError(f"model.mode={m.mode!r} / model.scheme={m.scheme!r}: expected one of "
                      f"{cfgan_lib.MODES} / {cfgan_lib.SCHEMES}")
  if m.mode == "item" and any(h is not None and np.any(h.train_row_U < 0) for h in (data.val, data.test)):
    raise ConfigError("item-based CFGAN scores only users it was trained on; protocol "
                      f"{data.protocol!r} holds users out (use model.mode='user')")
  # Rows the GAN generates: users (purchase vectors over items) or items (over users).
  train = data.train_UxI if m.mode == "user" else data.train_UxI.T.tocsr()
  rows_RxV = jnp.asarray(train.toarray(), jnp.float32)
  n_rows, dim = rows_RxV.shape
  gen, disc = cfgan_lib.build_cfgan(cfg, dim)
  tx_g, tx_d = optax.adam(t.lr_g), optax.adam(t.lr_d)
  base_key = jax.random.key(cfg.seed)
  use_zr, use_pm = m.scheme in ("ZR", "ZP"), m.scheme in ("PM", "ZP")

  def init(key: Array) -> State:
    kg, kd = jax.random.split(key)
    g = jax.jit(gen.init)(kg, jnp.zeros((1, dim)))["params"]
    d = jax.jit(disc.init)(kd, jnp.zeros((1, 2 * dim)))["params"]
    return {"g": g, "d": d, "g_opt": tx_g.init(g), "d_opt": tx_d.init(d), "step": jnp.zeros((), jnp.int32)}

  @jax.jit
  def epoch_negatives(epoch: Array, rows_RxV: Array) -> tuple[Array, Array]:
    """This epoch's D/G input masks e_u + k_u (PM) and ZR indicators of every row, each [R, V]:
    a pure function of (seed, epoch, row), shared by all D and G passes of the epoch."""
    ids_R = jnp.arange(n_rows)

    def draw(kind: int, ratio: float) -> Array:
      k = jax.random.fold_in(jax.random.fold_in(base_key, epoch), kind)
      return cfgan_lib.sample_unobserved(jax.vmap(lambda r: jax.random.fold_in(k, r))(ids_R), rows_RxV, ratio)

    pm_RxV = jnp.maximum(rows_RxV, draw(1, m.pm_ratio)) if use_pm else rows_RxV
    zr_RxV = draw(0, m.zr_ratio) if use_zr else jnp.zeros_like(rows_RxV)
    return pm_RxV, zr_RxV

  alpha = m.zr_coefficient if use_zr else 0.0

  # The big arrays are arguments, not closed-over constants (XLA would constant-fold them).
  def d_step(state: State, idx_B: Array, rows_RxV: Array, pm_RxV: Array, zr_RxV: Array) -> tuple[State, Array]:
    c_BxV = rows_RxV[idx_B]
    fake_BxV = jax.lax.stop_gradient(gen.apply({"params": state["g"]}, c_BxV)) * pm_RxV[idx_B]
    loss, grads = jax.value_and_grad(
        lambda d: cfgan_lib.discriminator_loss(disc, d, c_BxV, fake_BxV, m.reg_d))(state["d"])
    updates, d_opt = tx_d.update(grads, state["d_opt"], state["d"])
    return {**state, "d": optax.apply_updates(state["d"], updates), "d_opt": d_opt}, loss

  def g_step(state: State, idx_B: Array, rows_RxV: Array, pm_RxV: Array, zr_RxV: Array) -> tuple[State, Array]:
    c_BxV = rows_RxV[idx_B]
    loss, grads = jax.value_and_grad(
        lambda g: cfgan_lib.generator_loss(gen, disc, g, state["d"], c_BxV, pm_RxV[idx_B],
                                           zr_RxV[idx_B], alpha, m.reg_g))(state["g"])
    updates, g_opt = tx_g.update(grads, state["g_opt"], state["g"])
    return {**state, "g": optax.apply_updates(state["g"], updates), "g_opt": g_opt,
            "step": state["step"] + 1}, loss

  d_pass, g_pass = _scanned(d_step), _scanned(g_step)

  def train_epoch(state: State, epoch: int) -> tuple[State, dict[str, float]]:
    pm_RxV, zr_RxV = epoch_negatives(jnp.asarray(epoch, jnp.int32), rows_RxV)
    d_losses, g_losses = [], []
    for p in range(t.d_steps):
      batches = _batches(n_rows, t.batch_size_d, _epoch_rng(cfg.seed, epoch, 1 + p))
      state = d_pass(state, batches, d_losses, rows_RxV, pm_RxV, zr_RxV)
    for p in range(t.g_steps):
      batches = _batches(n_rows, t.batch_size_g, _epoch_rng(cfg.seed, epoch, 100 + p))
      state = g_pass(state, batches, g_losses, rows_RxV, pm_RxV, zr_RxV)
    g_loss = float(np.mean(np.concatenate(jax.device_get(g_losses))))
    d_loss = float(np.mean(np.concatenate(jax.device_get(d_losses))))
    return state, {"train_loss": g_loss, "g_loss": g_loss, "d_loss": d_loss}

  generate = jax.jit(lambda g, x: gen.apply({"params": g}, x))

  def scorer(state: State) -> Scorer:
    if m.mode == "user":  # G is conditioned on the user's vector: score the fold-in itself
      return lambda x_BxI, rows_B: generate(state["g"], jnp.asarray(x_BxI))
    # item-based: a user's scores are their column of G over every item's training vector
    scores_UxI = generate(state["g"], rows_RxV).T
    return lambda x_BxI, rows_B: scores_UxI[jnp.asarray(rows_B)]

  return Algorithm(init, train_epoch, scorer)


ALGORITHMS = {"multvae": vae_algorithm, "cfgan": cfgan_algorithm}


def run(cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool,
        eval_only: bool) -> dict:
  """Experiment entry point: data (interactions.load) -> ALGORITHMS[cfg.model.name] -> fit."""
  from genrec_jax.data import interactions  # pylint: disable=g-import-not-at-top

  if cfg.model.name not in ALGORITHMS:
    raise ConfigError(f"unknown model.name {cfg.model.name!r}; expected one of {tuple(ALGORITHMS)}")
  data = interactions.load(cfg, data_dir)
  alg = ALGORITHMS[cfg.model.name](cfg, data)
  if eval_only:
    out = evaluate_checkpoint(cfg, data, alg, workdir)
  else:
    out = fit(cfg, data, alg, workdir, resume)
  print(json.dumps({k: out[k] for k in ("val", "test")}, indent=1))
  paper = cfg.get("paper")
  if paper:
    print("published:", json.dumps(paper.to_dict()))
  return out
