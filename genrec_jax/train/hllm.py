"""End-to-end HLLM training: item LLM and user LLM fine-tuned together (hllm.mode='e2e').

One step (bytedance/HLLM hllm.py forward, trainset.py):
  1. B users, each a window of S = N + 1 consecutive items (data/pipeline.py training batch k,
     a pure function of (seed, k)); K negatives drawn uniformly from the training catalog with
     numpy's Generator seeded by (seed, k) (HLLM: K total over the global batch).
  2. The item LLM embeds all B·S + K items from their tokens (nn/hllm.py ItemLLM).
  3. The user LLM reads items 1..N of each window; its state at t is scored against item t + 1
     and the shared K negatives with losses.infonce_loss; gradients reach both LLMs, the [ITEM]
     token and the logit scale θ (clamped to [0, ln 100] after every update, as HLLM's clamp_).
Optimiser as HLLM's LLM_deepspeed.yaml: AdamW (lr, weight decay from cfg.train), linear warm-up
over hllm.warmup_frac of the steps then cosine decay to 0 (HF get_cosine_schedule_with_warmup).
Optional global-norm gradient clipping (train.grad_clip_norm; HLLM's trainer defines
clip_grad_norm = 1.0, but its training loop, as published, never applies it, so the default is off).

Evaluation is the spine's (trainer.evaluate: full ranking, HR/NDCG, history filter): the current
item LLM embeds the whole catalog once, the user LLM reads each evaluation history. Checkpoints,
metrics.jsonl / TensorBoard and results.json are train/loop.py's (its Run, without its epoch loop).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from genrec_jax import losses, metrics
from genrec_jax.config import ConfigError
from genrec_jax.data import pipeline
from genrec_jax.data.sequences import Examples
from genrec_jax.models import hllm as hllm_models
from genrec_jax.models.sequential import l2_normalize
from genrec_jax.nn.hllm import HLLM, ItemLLM, UserLLM
from genrec_jax.nn.llama import LlamaConfig
from genrec_jax.train import loop, trainer

Array = jax.Array
State = dict[str, Any]


# ------------------------------------------------------------------------------- the model


def build_e2e(cfg: ml_collections.ConfigDict, key: Array, pretrained=None, texts=None):
  """(model, params, tokenizer): HLLM with both LLMs truncated, initialised from SmolLM2.

  pretrained: a LlamaCheckpoint to use instead of loading SmolLM2 (tests pass tiny random ones).
  The user LLM is SmolLM2's first model.user_layers blocks with model.user_init='smollm2' (HLLM:
  both LLMs from pretrained checkpoints), or random with the same architecture ('random').
  hllm.item_llm='scratch': both LLMs random (models/hllm.py scratch_llama), the tokenizer a
  sentencepiece model trained on `texts`.
  """
  h, m = cfg.hllm, cfg.model
  init = m.get("user_init", "smollm2")
  if init not in hllm_models.USER_INITS:
    raise ConfigError(f"unknown model.user_init {init!r}; expected one of {hllm_models.USER_INITS}")
  k_scratch = jax.random.fold_in(key, 1)  # (key itself still splits into the item/user keys)
  if pretrained is None and h.item_llm == hllm_models.SCRATCH:
    if texts is None:
      raise ValueError("hllm.item_llm='scratch' trains its tokenizer on the item texts: pass texts")
    pretrained = hllm_models.scratch_llama(cfg, texts, k_scratch)
  elif pretrained is None:
    pretrained = hllm_models.load_pretrained_llama(h.item_llm, max(h.item_layers, m.user_layers))
  arch: LlamaConfig = pretrained.config
  for what, k in (("hllm.item_layers", h.item_layers), ("model.user_layers", m.user_layers)):
    if not 1 <= k <= arch.num_layers:
      raise ConfigError(f"{what}={k}: the LLM has {arch.num_layers} layers")
  model = HLLM(arch, arch, h.item_layers, m.user_layers, h.pooling, losses.LOGIT_SCALE_INIT)
  k_item, k_user = jax.random.split(key)
  token_embd, stack = hllm_models.split_llama_params(pretrained.params)
  keep = lambda k: {f"blk_{i}": stack[f"blk_{i}"] for i in range(k)} | {"output_norm": stack["output_norm"]}
  item = hllm_models.item_llm_params(
      {"token_embd": token_embd, **keep(h.item_layers)}, h.pooling, k_item)["params"]
  if init == "smollm2":
    user = {"llm": keep(m.user_layers)}
  else:
    x = jnp.zeros((1, 2, arch.hidden_size))
    user = UserLLM(arch, m.user_layers).init(k_user, x, jnp.ones((1, 2), jnp.int32),
                                              jnp.arange(2)[None])["params"]
  params = {"item_llm": item, "user_llm": user,
            losses.LOGIT_SCALE: jnp.asarray(losses.LOGIT_SCALE_INIT, jnp.float32)}
  # Copies: the item and user LLM start from the same pretrained arrays, and a donated train
  # state must not hold one buffer twice.
  return model, jax.tree.map(lambda x: jnp.array(x, copy=True), params), pretrained.tokenizer


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay to 0 over hllm.num_steps (HLLM's scheduler)."""
  t, h = cfg.train, cfg.hllm
  warmup = int(round(h.warmup_frac * h.num_steps))
  schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, h.num_steps, 0.0)
  return trainer.with_grad_clip(cfg, optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))


# ------------------------------------------------------------------------------ the batches


def window_items(batch: dict[str, np.ndarray]) -> np.ndarray:
  """Each row's S = N + 1 items i_1..i_{N+1} from a padded model batch: ids, then the last target.

  targets[b, t] = ids[b, t + 1] inside a training sequence, so (ids, last target) is the whole
  window; padding stays 0.
  """
  ids_BxN, targets_BxN = batch["ids"], batch["targets"]
  b, n = ids_BxN.shape
  length_B = (batch["seg"] != 0).sum(axis=1)
  seq_BxS = np.zeros((b, n + 1), ids_BxN.dtype)
  seq_BxS[:, :n] = ids_BxN
  rows = np.flatnonzero(length_B > 0)
  seq_BxS[rows, length_B[rows]] = targets_BxN[rows, length_B[rows] - 1]
  return seq_BxS


def e2e_batch(
    examples: Examples,
    tokens_VxT: np.ndarray,
    length_V: np.ndarray,
    catalog_C: np.ndarray,
    cfg: ml_collections.ConfigDict,
    step: int,
) -> dict[str, np.ndarray]:
  """Host arrays of training step `step`: the tokens of the B·S window items then the K
  negatives (tokens_MxT, length_M), and the user LLM's seg / pos / targets [B, N]."""
  m = pipeline.train_batch(examples, cfg.train.batch_size, cfg.seed, False, step)
  seq_BxS = window_items(m)
  rng = np.random.default_rng([cfg.seed, step])
  neg_K = catalog_C[rng.integers(0, len(catalog_C), cfg.loss.num_negatives)]
  rows_M = np.concatenate([seq_BxS.reshape(-1), neg_K])
  item_slot = cfg.hllm.pooling == "item_token"
  tok_MxT, len_M = hllm_models.batch_tokens(tokens_VxT, length_V, rows_M, item_slot,
                                            cfg.hllm.length_multiple)
  return {"tokens": tok_MxT, "length": len_M, "seg": m["seg"], "pos": m["pos"],
          "targets": m["targets"]}


# ------------------------------------------------------------------------------- the step


def make_loss_fn(model: HLLM, cfg: ml_collections.ConfigDict) -> Callable:
  """(params, batch) -> (InfoNCE loss of one end-to-end step, fraction of negatives kept by the
  0.99 similarity mask) (module docstring)."""
  thr = cfg.loss.get("nce_threshold", losses.NCE_THRESHOLD)

  def loss_fn(params, batch):
    seg_BxN = batch["seg"]
    b, n = seg_BxN.shape
    # e = ItemLLM(tokens) for the B·S window items and the K negatives.
    e_MxD = model.apply({"params": params}, batch["tokens"], batch["length"],
                        method=HLLM.item_embeddings)
    win_BxSxD = e_MxD[: b * (n + 1)].reshape(b, n + 1, -1)
    neg_KxD = e_MxD[b * (n + 1):]
    # u_t = UserLLM(e(i_1)..e(i_t)), scored against e(i_{t+1}) and the negatives.
    user_BxNxD = model.apply({"params": params}, win_BxSxD[:, :-1], seg_BxN, batch["pos"],
                             method=HLLM.user_states)
    weights_BxN = (batch["targets"] != 0).astype(user_BxNxD.dtype)
    loss = losses.infonce_loss(user_BxNxD, win_BxSxD[:, 1:], neg_KxD, weights_BxN,
                               params[losses.LOGIT_SCALE], thr)
    kept = losses.infonce_kept_fraction(jax.lax.stop_gradient(win_BxSxD[:, 1:]),
                                        jax.lax.stop_gradient(neg_KxD), weights_BxN, thr)
    return loss, kept

  return loss_fn


def make_train_step(model: HLLM, tx, cfg, mesh) -> Callable:
  loss_fn = make_loss_fn(model, cfg)
  replicated = NamedSharding(mesh, P())

  def step(state: State, batch: dict[str, Array]) -> tuple[State, Array]:
    """-> (new state, [loss, fraction of negatives kept])."""
    (loss, kept), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = losses.project_logit_scale(optax.apply_updates(state["params"], updates))
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, jnp.stack([loss, kept])

  return jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))


# ------------------------------------------------------------------------------ evaluation


def catalog_embeddings(model: HLLM, params, tokens_VxT, length_V, cfg) -> np.ndarray:
  """The current item LLM's embedding of every item row, float32 [V, D]."""
  item_llm = ItemLLM(model.item_config, model.item_layers, model.pooling)
  return hllm_models.encode_items(item_llm, {"params": params["item_llm"]}, tokens_VxT, length_V,
                                  cfg.hllm.encode_batch_size, cfg.hllm.length_multiple)


def make_rank_fn(model: HLLM, catalog: np.ndarray, num_items: int) -> Callable:
  """Jitted (params, eval batch, item table [V, D]) -> 1-based rank of each user's target."""
  candidate_V = np.zeros((num_items,), bool)
  candidate_V[catalog] = True
  candidate_V = jnp.asarray(candidate_V)
  user_llm = UserLLM(model.user_config, model.user_layers)

  @jax.jit
  def rank(params, batch, table_VxD):
    h_RxNxD = user_llm.apply({"params": params["user_llm"]}, table_VxD[batch["ids"]],
                             batch["seg"], batch["pos"])
    user_UxD = l2_normalize(h_RxNxD[batch["user_row"], batch["user_last"]])
    return metrics.target_ranks(user_UxD, batch["target"], batch["history"],
                                l2_normalize(table_VxD), candidate_V)

  return rank


def evaluate(model, params, rank, batches, tokens_VxT, length_V, cfg) -> dict[str, float]:
  table_VxD = jnp.asarray(catalog_embeddings(model, params, tokens_VxT, length_V, cfg))
  return trainer.evaluate(lambda p, b: rank(p, b, table_VxD), params, batches)


# --------------------------------------------------------------------------------- the loop


def fit_e2e(
    cfg: ml_collections.ConfigDict,
    task: trainer.Task,
    texts: list[str],
    workdir: str,
    resume: bool = False,
    pretrained=None,
) -> dict:
  """Trains both LLMs for hllm.num_steps steps; validates every hllm.eval_every steps (0: at the
  end only), keeps the best checkpoint by validation NDCG@10, tests it once; writes results.json.
  """
  t_start = time.time()
  h = cfg.hllm
  if cfg.loss.name != "infonce":
    raise ConfigError(f"hllm.mode='e2e' trains with loss.name='infonce', got {cfg.loss.name!r}")
  if not h.num_steps >= 1:
    raise ConfigError(f"hllm.num_steps must be >= 1, got {h.num_steps}")
  loop.refuse_existing(workdir, resume)  # before the slow LLM set-up
  mesh = trainer.make_mesh()
  n_devices = mesh.devices.size
  if (cfg.train.batch_size % n_devices) or (cfg.loss.num_negatives % n_devices):
    raise ConfigError(f"train.batch_size and loss.num_negatives must be divisible by the "
                      f"{n_devices} devices (or set GENREC_HOST_DEVICES=1)")
  model, params, tokenizer = build_e2e(cfg, jax.random.key(cfg.seed), pretrained, texts)
  tokens_VxT, length_V = hllm_models.tokenize_items(
      tokenizer, texts, h.max_text_len, h.pooling == "item_token")
  tx = make_optimizer(cfg)
  replicated = NamedSharding(mesh, P())
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  state = jax.device_put(state, replicated)
  step_fn = make_train_step(model, tx, cfg, mesh)
  rank = make_rank_fn(model, task.catalog, task.num_items)
  split = task.split
  selection = loop.Selection("val" if split.val is not None else "test", cfg.train.select_metric)
  sel_batches = trainer.eval_batches(split.val if split.val is not None else split.test, cfg, mesh)
  train_catalog = np.asarray(task.catalog if task.train_catalog is None else task.train_catalog)
  spe = pipeline.steps_per_epoch(len(split.train), cfg.train.batch_size)
  run, state = loop.open_run(workdir, resume, state, selection, t_start, shardings=replicated,
                             meta={"first_losses": []})
  first_losses = run.meta["first_losses"]  # the first log_every losses (restored on resume)
  eval_every = h.eval_every or h.num_steps

  # Step-based, not epoch-based: records every hllm.log_every steps, evaluation and checkpoints
  # every eval_every steps; a record's 'epoch' is the fraction of epochs done.
  window: list[Array] = []
  step0 = int(state["step"])
  bar = tqdm.tqdm(range(step0, h.num_steps), desc="hllm e2e", dynamic_ncols=True, mininterval=5.0)
  t_window = time.time()
  for step in bar:
    batch = e2e_batch(split.train, tokens_VxT, length_V, train_catalog, cfg, step)
    state, out = step_fn(state, trainer.to_device(batch, mesh))
    jax.block_until_ready(state)  # one step in flight (see trainer.fit)
    window.append(out)
    if len(first_losses) < h.log_every:
      first_losses.append(float(out[0]))
    done = step + 1
    if done % h.log_every == 0 or done == h.num_steps or done % eval_every == 0:
      out_w = np.asarray(jax.device_get(window))
      window = []
      if not np.isfinite(out_w).all():
        raise FloatingPointError(f"training loss became {out_w[:, 0]} at step {done}")
      record: dict[str, Any] = {
          "epoch": round(done / spe, 4), "step": done, "train_loss": float(out_w[:, 0].mean()),
          "nce_kept": float(out_w[:, 1].mean()),
          "logit_scale": float(jnp.exp(state["params"][losses.LOGIT_SCALE])),
          "step_time_s": (time.time() - t_window) / len(out_w),
      }
      bar.set_postfix(loss=f"{record['train_loss']:.4f}")
      loop.say(f"step {done:5d}  loss {record['train_loss']:.4f}  "
               f"negatives kept {record['nce_kept']:.3f}  scale {record['logit_scale']:.2f}"
               f"  {record['step_time_s']:.2f}s/step")
      if done % eval_every == 0 or done == h.num_steps:
        t_eval = time.time()
        record[selection.split] = evaluate(model, state["params"], rank, sel_batches, tokens_VxT,
                                           length_V, cfg)
        record["eval_time_s"] = time.time() - t_eval
        loop.say(f"step {done:5d}  {selection.split} {loop.ndcg_hr(record[selection.split])}"
                 f"  ({record['eval_time_s']:.0f}s)")
        run.save(state, record[selection.split], record["epoch"], step=done)
      run.log.write(record)
      t_window = time.time()

  best_state, best_meta = run.restore_best(state)
  val = (evaluate(model, best_state["params"], rank, sel_batches, tokens_VxT, length_V, cfg)
         if split.val is not None else None)
  test_batches = trainer.eval_batches(split.test, cfg, mesh)
  test = evaluate(model, best_state["params"], rank, test_batches, tokens_VxT, length_V, cfg)
  history = run.log.history()
  return run.write_results(
      cfg, split.protocol, best_meta, val, test, mode="e2e", best_step=best_meta.get("best_step"),
      steps=h.num_steps, train_loss_first_steps=float(np.mean(first_losses)),
      train_loss_last=history[-1]["train_loss"] if history else None)
