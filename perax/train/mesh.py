"""Shardings of train states and batches on the device mesh (built by perax.models.sharding.make_mesh).

The mesh has three axes, always in this order:
  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    fully sharded data parallelism: the batch is split and so are parameters (ZeRO-3 style);
  tensor  tensor parallelism: attention heads and MLP columns are split.

A training config gives the mesh shape as a tuple ``(data, fsdp, tensor)``; one entry may be -1 to take
all remaining devices, e.g. ``(-1, 1, 1)`` (pure data parallel) or ``(1, -1, 1)`` (pure FSDP).

Parameters carry logical axis names (``logical_axes`` metadata, perax.models.layers); the rules of
perax.models.sharding map them to mesh axes (a dimension is split only over mesh axes that divide
it, and each mesh axis once per array). Adam's moments mirror the parameters' Variables, so they are
sharded like their parameters; scalars (the step, optimizer counts) are replicated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perax.models import sharding as model_sharding

MESH_AXES = model_sharding.MESH_AXES
BATCH_AXES = ('data', 'fsdp')


def state_shardings(
  tree: Any, mesh: Mesh, rules: model_sharding.Rules = model_sharding.LOGICAL_AXIS_RULES
) -> Any:
  """NamedShardings for every array of ``tree`` (an nnx.State, a TrainState, any pytree).

  nnx Variables are sharded by their logical axes; other arrays are replicated. The result has the
  structure of ``tree`` (each Variable keeps its place, holding a NamedSharding), so it serves as
  ``jax.jit``'s in/out shardings, ``jax.device_put``'s target and Orbax's restore target.
  """

  def sharding(x):
    if isinstance(x, nnx.Variable):
      axes = x.get_metadata().get('logical_axes')
      spec = PartitionSpec() if axes is None else model_sharding.partition_spec(axes, x.shape, mesh, rules)
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits an array's leading (batch) dimension over the data and fsdp axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
  """The number of batch shards (data x fsdp): a global batch is a multiple of it."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
