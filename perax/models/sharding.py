"""Logical-axis sharding: parameter axis names -> mesh axes ('data', 'fsdp', 'tensor').

Every parameter carries ``logical_axes`` metadata (perax.models.layers). :data:`LOGICAL_AXIS_RULES`
maps each logical name to mesh axes, first matching rule wins, ending in a catch-all that
replicates.
A dimension is only split over mesh axes whose combined size divides it (otherwise over the
longest prefix of them that does, possibly none), and a mesh axis is used at most once per array,
so any model fits any mesh (e.g. a single key/value head stays replicated on a 'tensor' axis).

  mesh = make_mesh(fsdp=4, tensor=2)
  shardings = parameter_shardings(model, mesh)
  nnx.update(model, jax.device_put(nnx.state(model), shardings))
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
CATCH_ALL = '*'

# (logical axis name, mesh axis or axes or None), in priority order.
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
LOGICAL_AXIS_RULES: Rules = (
  ('batch', ('data', 'fsdp')),
  ('vocab', 'tensor'),
  ('heads', 'tensor'),
  ('kv_heads', 'tensor'),
  ('mlp', 'tensor'),
  ('audio_heads', 'tensor'),
  ('audio_mlp', 'tensor'),
  ('embed', 'fsdp'),
  ('audio_embed', 'fsdp'),
  (CATCH_ALL, None),
)


def make_mesh(
  data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """The one ('data', 'fsdp', 'tensor') mesh builder; one size may be -1 to take the remaining devices.

  Training configs give the sizes as a tuple (``make_mesh(*config.mesh_shape)``).

  Raises:
    ValueError: a size is 0 or below -1, more than one is -1, or the sizes do not use exactly the
      ``len(devices)`` devices (default: all of them).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(s) for s in (data, fsdp, tensor)]
  shape = dict(zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh {shape}: sizes must be positive, with at most one -1')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'mesh {shape} does not divide the {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} does not use the {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
  for logical, mesh_axes in rules:
    if logical in (name, CATCH_ALL):
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  raise ValueError(f'no sharding rule for logical axis {name!r} and no catch-all')


def partition_spec(
  logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES
) -> PartitionSpec:
  """The PartitionSpec of one array from its logical axis names and shape (see module docstring)."""
  if len(logical_axes) != len(shape):
    raise ValueError(f'logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}')
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    chosen: list[str] = []
    for axis in _mesh_axes_for(name, rules):
      if axis not in mesh.shape or axis in used:
        continue
      product = int(np.prod([mesh.shape[a] for a in chosen + [axis]]))
      if size % product:
        break
      chosen.append(axis)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return PartitionSpec(*spec)


def parameter_shardings(model_or_state, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> nnx.State:
  """NamedShardings for every variable, as an ``nnx.State`` mirroring ``nnx.state(model)``.

  Args:
    model_or_state: an nnx Module (concrete or from ``nnx.eval_shape``) or its state.
    mesh: a mesh with (some of) the axes 'data', 'fsdp', 'tensor'.
    rules: logical-axis rules; variables without ``logical_axes`` metadata are replicated.
  """
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)

  def sharding(variable: nnx.Variable) -> nnx.Variable:
    axes = variable.get_metadata().get('logical_axes')
    spec = PartitionSpec() if axes is None else partition_spec(axes, variable.shape, mesh, rules)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
