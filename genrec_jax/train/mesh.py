"""The device mesh ('data', 'model'), logical partition rules, and the shardings they give.

One `jax.sharding.Mesh` with named axes ('data', 'model') is built from `cfg.mesh`:
  mesh.data  = -1   devices the batch is split over (-1: all devices left after `model`)
  mesh.model = 1    devices the item table's rows are split over
  mesh.rules        logical axis name -> mesh axis (or None), e.g. (('vocab', 'model'), ('embed', None))
Params carry logical axis names (a model's PARAM_AXES, e.g. the item table is ('vocab', 'embed'));
a name with no rule, and every other param, is replicated. The item table is row-sharded exactly
when 'vocab' maps to 'model' and mesh.model > 1 (`items_sharded`); the trainer then scores items
with the explicit collectives of `genrec_jax.sharded`. Its rows are padded to a multiple of
mesh.model (`table_rows`): the extra rows are never targets, negatives or candidates.
The same code runs on 1..N devices and any mesh shape; only the config changes.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genrec_jax.config import ConfigError

AXES = ("data", "model")
DEFAULT_RULES = (("vocab", "model"), ("embed", None))


def mesh_fields(cfg: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """cfg.mesh, or the defaults (pure data parallelism) for configs that predate it."""
  m = None if cfg is None else cfg.get("mesh")
  if m is None:
    m = ml_collections.ConfigDict({"data": -1, "model": 1, "rules": DEFAULT_RULES})
  return m


def rules_of(cfg: ml_collections.ConfigDict | None) -> tuple[tuple[str, str | None], ...]:
  """cfg.mesh.rules as a tuple of (logical name, mesh axis or None), validated."""
  rules = mesh_fields(cfg).get("rules", DEFAULT_RULES)
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str) or rule[1] not in (*AXES, None):
      raise ConfigError(f"mesh.rules entry {rule!r} is not (logical name, one of {AXES} or None)")
    out.append((rule[0], rule[1]))
  vocab = [axis for name, axis in out if name == "vocab"]
  if vocab and vocab[0] not in ("model", None):
    raise ConfigError(f"mesh.rules maps 'vocab' to {vocab[0]!r}; the item table can only be split "
                      "over 'model' (the batch is already split over 'data') or replicated (None)")
  return tuple(out)


def mesh_shape(cfg: ml_collections.ConfigDict | None, num_devices: int) -> tuple[int, int]:
  """(data, model) sizes from cfg.mesh; their product must be `num_devices`."""
  m = mesh_fields(cfg)
  data, model = int(m.get("data", -1)), int(m.get("model", 1))
  if model < 1 or model > num_devices or num_devices % model:
    raise ConfigError(f"mesh.model={model} must be a positive divisor of the {num_devices} devices")
  if data == -1:
    data = num_devices // model
  if data < 1 or data * model != num_devices:
    raise ConfigError(
        f"mesh.data={m.get('data')} x mesh.model={model} must equal the {num_devices} devices "
        "(mesh.data=-1 takes all remaining ones; on CPU set GENREC_HOST_DEVICES)"
    )
  return data, model


def build_mesh(cfg: ml_collections.ConfigDict | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """The ('data', 'model') mesh of cfg.mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(cfg, len(devices))
  rules_of(cfg)  # bad rules fail here, before anything runs
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh(shape, AXES, axis_types=(auto, auto), devices=devices)


def items_sharded(cfg: ml_collections.ConfigDict | None, mesh: Mesh | None) -> bool:
  """True when the rules split the item table's rows over a 'model' axis of > 1 device."""
  if mesh is None or mesh.shape.get("model", 1) == 1:
    return False
  return dict(rules_of(cfg)).get("vocab") == "model"


def check_sharded_model(cfg: ml_collections.ConfigDict) -> None:
  """The row-sharded path covers the learned id table only."""
  if cfg.model.name == "hllm" or cfg.model.get("item_features", "id") != "id":
    raise ConfigError(
        f"a row-sharded item table (mesh.model={cfg.mesh.model}, 'vocab' -> 'model') needs "
        f"model.item_features='id' and an HSTU/SASRec model; got model.name={cfg.model.name!r}, "
        f"item_features={cfg.model.get('item_features', 'id')!r}. Set mesh.model=1."
    )
  if cfg.loss.name not in ("sampled_softmax", "full_softmax"):
    raise ConfigError(f"loss {cfg.loss.name!r} has no row-sharded implementation; "
                      "use sampled_softmax or full_softmax, or mesh.model=1")


def table_rows(num_items: int, cfg: ml_collections.ConfigDict | None, mesh: Mesh | None) -> int:
  """Item-table rows: num_items, rounded up to a multiple of mesh.model when rows are sharded."""
  if not items_sharded(cfg, mesh):
    return num_items
  m = mesh.shape["model"]
  return -(-num_items // m) * m


def logical_specs(tree: Any, param_axes: dict[str, tuple[str | None, ...]]) -> Any:
  """PartitionSpecs of logical names for every leaf of a state tree: a leaf whose last path key
  names a param of `param_axes` (the param itself, or its Adam moments, which mirror the params
  tree) with as many dims gets that param's names; every other leaf P() (replicated)."""

  def spec(path, leaf):
    key = path[-1] if path else None
    name = getattr(key, "key", None)
    axes = param_axes.get(name) if isinstance(name, str) else None
    return P(*axes) if axes is not None and len(axes) == np.ndim(leaf) else P()

  return jax.tree_util.tree_map_with_path(spec, tree)


def state_shardings(
    abstract_state: Any, param_axes: dict[str, tuple[str | None, ...]], cfg: ml_collections.ConfigDict | None,
    mesh: Mesh,
) -> Any:
  """NamedShardings of a state tree: cfg.mesh.rules applied to the logical names of `param_axes`;
  a leaf not split over any mesh axis of size > 1 gets exactly NamedSharding(mesh, P()), so
  replicated states compare equal whatever the rules (jit caches on shardings)."""
  rules = rules_of(cfg)

  def sharding(logical):
    spec = nn.logical_to_mesh_axes(logical, rules)
    if all(axis is None or mesh.shape[axis] == 1 for axis in spec):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, spec)

  specs = logical_specs(abstract_state, param_axes)
  return jax.tree_util.tree_map(sharding, specs, is_leaf=lambda x: isinstance(x, P))
