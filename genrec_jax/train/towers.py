"""Data, config and fit loop for the collaborative-filtering towers (models/towers.py).

Data: our sequential leave-one-out split (`registry.load_task` with history_filter='all', as
`data/interactions.load_loo`), so the users, val/test targets and ranked catalog are those of the
SASRec/HSTU rows. Training examples are (user, item) pairs, one per training event (each user's
events but the last two), in chronological order; a pair's history is the user's `max_history`
training items before it. Validation ranks the second-to-last item from the training items;
test ranks the last item from every earlier item (training + validation item), for models that
read a history; the ranking removes every past item (history_filter='all'; the sequential rows
use the last max_seq_len = 200 by default, which on ML-1M differs for users with > 200 events).
MF-BPR has one learned vector per user, so its test user vector is the one trained without the
validation item.

Loop: optax Adam, one jitted step of (state, batch) with key fold_in(seed, step), the epoch's
pair order a pure function of (seed, epoch) (so --resume continues exactly), the last partial
batch of an epoch dropped (the next epoch's shuffle covers it), per-epoch validation with the
best checkpoint kept (train/loop.py), test once on the best.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from genrec_jax import losses, metrics
from genrec_jax.config import ConfigError
from genrec_jax.data import amazon, movielens
from genrec_jax.data.registry import load_task
from genrec_jax.models.towers import MODELS, build_tower_model
from genrec_jax.train import loop
from genrec_jax.train.trainer import evaluate, make_mesh, to_device

Array = jax.Array
State = dict[str, Any]
LOSSES = ("bpr", "softmax")
LOGQ = ("empirical", "streaming", "none")


def tower_config() -> ml_collections.ConfigDict:
  """Defaults shared by the tower experiments (each overrides model/loss fields)."""
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.seed = 42
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-1m"
  c.data.protocol = "loo"
  c.data.download = False
  c.data.catalog = "metadata"  # MovieLens candidates: 'metadata' (every movie) or 'rated' (config.py)
  c.data.max_history = 50  # history items read by the user tower (two-tower, YouTubeDNN)
  c.data.zip_prefix_len = 2  # MovieLens user feature: the first k characters of the zip code

  c.model = ml_collections.ConfigDict()
  c.model.name = "mf_bpr"  # 'mf_bpr' | 'two_tower' | 'youtubednn'
  c.model.embed_dim = 64
  c.model.hidden_dims = (256,)  # MLP tower widths (two-tower, YouTubeDNN)
  c.model.use_bias = True  # MF-BPR item bias
  c.model.init_std = 0.1  # MF-BPR: embeddings ~ N(0, init_std²) (Rendle's 0.1)
  c.model.user_features = True  # MovieLens demographics in the user tower
  c.model.item_features = True  # two-tower: genres (MovieLens) / attributes (Amazon)
  c.model.use_history = True  # two-tower: mean-pooled history in the user tower

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "bpr"  # 'bpr' | 'softmax' (in-batch and/or sampled, losses.in_batch_softmax_loss)
  c.loss.l2_reg = 0.0  # BPR's λ over the parameters of each sampled triple
  c.loss.exclude_seen = True  # BPR negatives j ∉ I_u⁺ (the user's training items), as Rendle's D_S
  c.loss.temperature = 0.05
  c.loss.in_batch = True  # softmax: the other positives of the batch are negatives
  # logQ correction of the in-batch candidates: 'empirical' (log B·n_j/Σn over the training
  # positives, losses.empirical_log_q) | 'streaming' (Yi et al.'s Algorithm 1) | 'none'. The
  # uniform negatives below always carry their own log q = log(K / |C|).
  c.loss.logq = "empirical"
  c.loss.streaming_alpha = 0.01  # Yi et al.'s α of the streaming frequency estimate
  c.loss.num_uniform_negatives = 0  # > 0: extra negatives uniform over the catalog (mixed)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1024
  c.train.num_epochs = 30
  c.train.learning_rate = 1e-3
  c.train.eval_batch_size = 512
  c.train.select_metric = "ndcg@10"
  c.train.patience = 0  # stop after this many epochs without a validation gain; 0 = off
  c.paper = ml_collections.ConfigDict()
  return c


# ------------------------------------------------------------------------------------ data ----


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One held-out item per user and every item before it (model input and ranking filter)."""

  past_UxH: np.ndarray  # int32 chronological past items, 0-padded
  past_len_U: np.ndarray  # int32
  target_U: np.ndarray  # int32


@dataclasses.dataclass(frozen=True)
class TowerData:
  train_items_UxT: np.ndarray  # int32 each user's training items in order, 0-padded
  train_len_U: np.ndarray  # int32
  val: EvalSet | None
  test: EvalSet
  user_id_U: np.ndarray  # int64 original user ids (row u = user u of the model)
  catalog: np.ndarray  # int64 ids that are ranked and sampled
  num_items: int  # item table rows (max id + 1)
  protocol: str
  user_feats_UxF: np.ndarray | None = None  # int32 categorical user fields, 0 = unknown
  user_vocab_sizes: tuple[int, ...] = ()
  item_attrs_VxA: np.ndarray | None = None  # int32 item attribute ids, 0-padded

  @property
  def num_users(self) -> int:
    return len(self.user_id_U)

  def pairs(self) -> tuple[np.ndarray, np.ndarray]:
    """(user row, position) of every training event, [P] each."""
    user_P = np.repeat(np.arange(self.num_users), self.train_len_U)
    pos_P = np.arange(len(user_P)) - np.repeat(np.cumsum(self.train_len_U) - self.train_len_U, self.train_len_U)
    return user_P, pos_P.astype(np.int64)

  def item_counts(self) -> np.ndarray:
    """How often each item is a training positive, [num_items]."""
    return np.bincount(self.train_items_UxT[self.train_items_UxT != 0], minlength=self.num_items)


def last_items(items_UxT: np.ndarray, rows_B: np.ndarray, end_B: np.ndarray, h: int) -> np.ndarray:
  """items[rows[b], end[b] - h : end[b]] right-aligned in [B, h], 0 where the index is < 0."""
  idx_BxH = end_B[:, None] - h + np.arange(h)[None, :]
  return np.where(idx_BxH >= 0, items_UxT[rows_B[:, None], np.maximum(idx_BxH, 0)], 0).astype(np.int32)


def _eval_set(ex) -> EvalSet:
  past = ex.past_UxH.astype(np.int32)
  target = ex.targets_UxN[np.arange(len(ex)), ex.length_U - 1].astype(np.int32)
  return EvalSet(past, np.count_nonzero(past, axis=1).astype(np.int32), target)


def encode_users(users: movielens.Users, zip_prefix_len: int) -> tuple[np.ndarray, tuple[int, ...]]:
  """Categorical ids [U, 4] (gender, age group, occupation, zip prefix; 1-based, 0 = unknown)
  and each field's vocabulary size. ml-100k ages (years) are bucketed into ml-1m's age groups."""
  age = np.asarray(users.age)
  group = np.searchsorted(movielens.ML1M_AGE_GROUPS, age, side="right")  # 1..7 (ml-1m codes map to themselves)
  fields = [np.asarray(users.gender), None, np.asarray(users.occupation),
            np.asarray([z[:zip_prefix_len] for z in users.zip_code])]
  ids, sizes = [], []
  for f, values in enumerate(fields):
    if values is None:
      ids.append(group)
      sizes.append(len(movielens.ML1M_AGE_GROUPS) + 1)
      continue
    vocab, inverse = np.unique(values, return_inverse=True)
    ids.append(inverse + 1)
    sizes.append(len(vocab) + 1)
  return np.stack(ids, axis=1).astype(np.int32), tuple(sizes)


def genre_table(movies: movielens.Movies, num_items: int) -> np.ndarray:
  """[num_items, G] genre ids (1-based over the sorted genre names) of each movie, 0-padded."""
  names = sorted({g for gs in movies.genres for g in gs})
  index = {g: k + 1 for k, g in enumerate(names)}
  width = max((len(gs) for gs in movies.genres), default=0)
  table = np.zeros((num_items, max(width, 1)), np.int32)
  for item, gs in zip(movies.item, movies.genres):
    table[item, : len(gs)] = [index[g] for g in gs]
  return table


def load_tower_data(cfg: ml_collections.ConfigDict, data_dir: str) -> TowerData:
  """Our leave-one-out split of `cfg.data.dataset` (module doc) with user and item features."""
  d = cfg.data
  if d.protocol != "loo":
    raise ConfigError(f"tower models support data.protocol='loo' only, got {d.protocol!r}")
  c = ml_collections.ConfigDict()
  c.seed = cfg.seed
  c.data = ml_collections.ConfigDict(dict(
      dataset=d.dataset, protocol="loo", max_seq_len=1, download=d.download, history_filter="all",
      cold_start_frac=0.0, catalog=d.catalog))
  c.model = ml_collections.ConfigDict(dict(name=cfg.model.name))
  task = load_task(c, data_dir)
  split = task.split
  val, test = _eval_set(split.val), _eval_set(split.test)
  user_id_U = split.test.user_U.astype(np.int64)
  feats, vocab, attrs = None, (), None
  if d.dataset in movielens.DATASETS:
    if d.dataset in ("ml-1m", "ml-100k"):
      users = movielens.load_users(data_dir, d.dataset, download=d.download)
      all_feats, vocab = encode_users(users, d.zip_prefix_len)
      row = {int(u): k for k, u in enumerate(users.user)}
      missing = [int(u) for u in user_id_U if int(u) not in row]
      if missing:
        raise ValueError(f"{users.source}: users {missing[:5]} rated movies but are not listed")
      feats = all_feats[[row[int(u)] for u in user_id_U]]
    attrs = genre_table(movielens.load_movies(data_dir, d.dataset, download=d.download), task.num_items)
  elif d.dataset in amazon.DATASETS:
    raw = amazon.load(data_dir, d.dataset).attributes
    if raw is not None:
      attrs = np.zeros((task.num_items, raw.shape[1]), np.int32)
      n = min(len(raw), task.num_items)
      attrs[:n] = raw[:n]
  return TowerData(
      train_items_UxT=val.past_UxH, train_len_U=val.past_len_U, val=val, test=test,
      user_id_U=user_id_U, catalog=task.catalog, num_items=task.num_items, protocol=split.protocol,
      user_feats_UxF=feats, user_vocab_sizes=vocab, item_attrs_VxA=attrs,
  )


def train_batch(data: TowerData, user_B: np.ndarray, pos_B: np.ndarray, h: int) -> dict[str, np.ndarray]:
  """(user, positive item, the user's h training items before it, user features)."""
  batch = {
      "user": user_B.astype(np.int32),
      "item": data.train_items_UxT[user_B, pos_B].astype(np.int32),
      "history": last_items(data.train_items_UxT, user_B, pos_B, h),
  }
  if data.user_feats_UxF is not None:
    batch["user_feats"] = data.user_feats_UxF[user_B]
  return batch


def eval_batches(data: TowerData, ev: EvalSet, h: int, batch_size: int) -> list[tuple[dict, int]]:
  """Host batches of every evaluation user (the last one padded with copies of user 0)."""
  out = []
  for start in range(0, data.num_users, batch_size):
    rows = np.arange(start, min(start + batch_size, data.num_users))
    n = len(rows)
    rows = np.concatenate([rows, np.zeros(batch_size - n, rows.dtype)])
    batch = {
        "user": rows.astype(np.int32),
        "history": last_items(ev.past_UxH, rows, ev.past_len_U[rows], h),
        "target": ev.target_U[rows],
        "exclude": ev.past_UxH[rows],
    }
    if data.user_feats_UxF is not None:
      batch["user_feats"] = data.user_feats_UxF[rows]
    out.append((batch, n))
  return out


# ------------------------------------------------------------------------------- training ----


def check_config(cfg: ml_collections.ConfigDict, num_devices: int) -> None:
  m, lc = cfg.model, cfg.loss
  if m.name not in MODELS:
    raise ConfigError(f"unknown model.name {m.name!r}; expected one of {MODELS}")
  if lc.name not in LOSSES:
    raise ConfigError(f"unknown loss.name {lc.name!r}; expected one of {LOSSES}")
  if (m.name == "mf_bpr") != (lc.name == "bpr"):
    raise ConfigError(f"model.name={m.name!r} trains with loss.name="
                      f"{'bpr' if m.name == 'mf_bpr' else 'softmax'!r}, got {lc.name!r}")
  if lc.logq not in LOGQ:
    raise ConfigError(f"unknown loss.logq {lc.logq!r}; expected one of {LOGQ}")
  if lc.name == "softmax" and not lc.in_batch and lc.num_uniform_negatives <= 0:
    raise ConfigError("loss.in_batch=False needs loss.num_uniform_negatives > 0 (no negatives left)")
  for key in ("batch_size", "eval_batch_size"):
    if cfg.train[key] % num_devices:
      raise ConfigError(f"train.{key}={cfg.train[key]} is not divisible by the {num_devices} devices "
                        f"the batch is split over; change it, or set GENREC_HOST_DEVICES=1")


def init_state(model, tx, data: TowerData, cfg, key: Array) -> State:
  h = cfg.data.max_history
  dummy = {"user": jnp.zeros((1,), jnp.int32), "history": jnp.zeros((1, h), jnp.int32)}
  if data.user_feats_UxF is not None:
    dummy["user_feats"] = jnp.zeros((1, data.user_feats_UxF.shape[1]), jnp.int32)

  def init(k):
    return model.init(k, dummy, method=lambda mdl, b: (mdl.user_vectors(b), mdl.item_vectors(b["user"])))

  params = jax.jit(init)({"params": key})["params"]
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  if cfg.loss.name == "softmax" and cfg.loss.logq == "streaming":
    # A_j = 0 (never seen), δ_j = |C| / B: the gap between occurrences of a uniform stream.
    gap = len(data.catalog) / cfg.train.batch_size
    state["freq"] = {"last_step": jnp.zeros((data.num_items,), jnp.float32),
                     "delta": jnp.full((data.num_items,), gap, jnp.float32)}
  return state


def make_train_step(model, tx, cfg, data: TowerData, mesh) -> Callable:
  lc = cfg.loss
  catalog_C = jnp.asarray(data.catalog, jnp.int32)
  num_c = len(data.catalog)
  base_key = jax.random.key(cfg.seed)
  log_q_V = jnp.asarray(losses.empirical_log_q(data.item_counts(), cfg.train.batch_size))
  seen_UxV = None
  if lc.name == "bpr" and lc.get("exclude_seen", True):  # BPR's negatives: items the user has not seen
    seen = np.zeros((data.num_users, data.num_items), bool)
    seen[np.repeat(np.arange(data.num_users), data.train_items_UxT.shape[1]), data.train_items_UxT.reshape(-1)] = True
    seen[:, 0] = False  # padding id; never in the catalog
    seen_UxV = jnp.asarray(seen)

  def loss_fn(params, batch, key, freq):
    def apply(method, *args):
      return model.apply({"params": params}, *args, method=method)

    items_B = batch["item"]
    user_BxD = apply(model.user_vectors, batch)
    if lc.name == "bpr":
      # L = mean −log σ(s_ui − s_uj) + λ Σ_rows ‖θ‖²,  j ~ Uniform(catalog \ I_u⁺)  (or the whole
      # catalog with loss.exclude_seen=False)
      if seen_UxV is not None:
        neg_B = losses.sample_unseen(key, seen_UxV, batch["user"], catalog_C)
      else:
        neg_B = catalog_C[jax.random.randint(key, items_B.shape, 0, num_c)]
      pos_s_B = jnp.sum(user_BxD * apply(model.item_vectors, items_B), axis=-1)
      neg_s_B = jnp.sum(user_BxD * apply(model.item_vectors, neg_B), axis=-1)
      reg = losses.l2_penalty(*apply(model.l2_rows, batch, items_B, neg_B))
      return losses.bpr_loss(pos_s_B, neg_s_B) + lc.l2_reg * reg
    item_BxD = apply(model.item_vectors, items_B)
    log_q_B = None
    if lc.logq == "empirical":
      log_q_B = log_q_V[items_B]
    elif lc.logq == "streaming":
      log_q_B = losses.streaming_log_q(freq["delta"], items_B)
    extra = None
    k = lc.num_uniform_negatives
    if k > 0:
      neg_K = catalog_C[jax.random.randint(key, (k,), 0, num_c)]
      log_q_K = jnp.full((k,), math.log(k / num_c), jnp.float32)  # expected count K / |C|
      extra = (apply(model.item_vectors, neg_K), log_q_K, neg_K)
    return losses.in_batch_softmax_loss(
        user_BxD, item_BxD, log_q_B, lc.temperature, extra, item_ids_B=items_B, in_batch=lc.in_batch
    )

  replicated = NamedSharding(mesh, P())

  def step(state: State, batch: dict[str, Array]) -> tuple[State, Array]:
    key = jax.random.fold_in(base_key, state["step"])
    freq = state.get("freq")
    if freq is not None:  # Yi et al. Alg. 1: update A, δ with this batch, then read q from δ
      last, delta = losses.streaming_frequency_update(
          freq["last_step"], freq["delta"], batch["item"], state["step"] + 1, lc.streaming_alpha)
      freq = {"last_step": last, "delta": delta}
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key, freq)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1}
    if freq is not None:
      new["freq"] = freq
    return new, loss

  return jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))


def make_rank_fn(model, data: TowerData) -> Callable:
  """Jitted (params, eval batch) -> 1-based full-ranking rank of each user's target [B]."""
  candidate_V = np.zeros((data.num_items,), bool)
  candidate_V[data.catalog] = True
  candidate_V = jnp.asarray(candidate_V)

  @jax.jit
  def rank(params, batch):
    user_BxD = model.apply({"params": params}, batch, method=model.user_vectors)
    table_VxD = model.apply({"params": params}, method=model.item_table)
    return metrics.target_ranks(user_BxD, batch["target"], batch["exclude"], table_VxD, candidate_V)

  return rank


def fit(cfg: ml_collections.ConfigDict, data: TowerData, workdir: str, resume: bool = False) -> dict:
  """Trains with per-epoch validation, keeps the best checkpoint, evaluates test once."""
  t_start = time.time()
  mesh = make_mesh()
  check_config(cfg, mesh.devices.size)
  model = build_tower_model(cfg, data.num_users, data.num_items, data.user_vocab_sizes, data.item_attrs_VxA)
  tx = optax.adam(cfg.train.learning_rate)
  replicated = NamedSharding(mesh, P())
  state = jax.device_put(init_state(model, tx, data, cfg, jax.random.key(cfg.seed)), replicated)
  train_step = make_train_step(model, tx, cfg, data, mesh)
  rank_fn = make_rank_fn(model, data)
  h, bs = cfg.data.max_history, cfg.train.batch_size

  def device_batches(ev):
    return [(to_device(b, mesh), n) for b, n in eval_batches(data, ev, h, cfg.train.eval_batch_size)]

  val_batches = device_batches(data.val)
  user_P, pos_P = data.pairs()
  spe = len(user_P) // bs
  if spe == 0:
    raise ConfigError(f"train.batch_size={bs} exceeds the {len(user_P)} training pairs")
  selection = loop.Selection("val", cfg.train.select_metric)
  run, state = loop.open_run(workdir, resume, state, selection, t_start, shardings=replicated)

  def train_epoch(state: State, epoch: int) -> tuple[State, dict[str, float]]:
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(user_P))

    def step(state: State, i: int) -> tuple[State, Array]:
      rows = order[i * bs : (i + 1) * bs]
      return train_step(state, to_device(train_batch(data, user_P[rows], pos_P[rows], h), mesh))

    state, train_loss = loop.train_steps(state, step, spe, epoch, cfg.train.num_epochs, show_every=50)
    return state, {"train_loss": train_loss}

  state = loop.epoch_loop(run, state, cfg.train.num_epochs, train_epoch,
                          lambda s: evaluate(rank_fn, s["params"], val_batches),
                          patience=cfg.train.patience, show=loop.ndcg_hr)
  best_state, best_meta = run.restore_best(state)
  val = evaluate(rank_fn, best_state["params"], val_batches)
  test = evaluate(rank_fn, best_state["params"], device_batches(data.test))
  return run.write_results(cfg, data.protocol, best_meta, val, test)


def run(cfg: ml_collections.ConfigDict, workdir: str, data_dir: str, resume: bool, eval_only: bool) -> dict:
  """Experiment entry point (`cli.run(get_config, towers.run)`): data -> fit -> results.json."""
  if eval_only:
    raise ConfigError("--eval_only is not supported by the tower experiments; results.json holds "
                      "the best checkpoint's val and test metrics")
  if cfg.model.name not in MODELS:
    raise ConfigError(f"unknown model.name {cfg.model.name!r}; expected one of {MODELS}")
  data = load_tower_data(cfg, data_dir)
  results = fit(cfg, data, workdir, resume=resume)
  for split in ("val", "test"):
    m = results[split]
    print(f"{split}: " + "  ".join(f"{k} {m[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")))
  return results
