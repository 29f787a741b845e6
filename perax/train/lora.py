"""Low-rank adapters (LoRA) around a model's linear layers.

An adapted layer computes ``y = base(x) + (x . A) . B * alpha / rank`` with ``A [*in, rank]`` drawn
at random and ``B [rank, *out]`` zero, so an adapted model starts exactly equal to its base model.
Kernels may have several input or output dimensions (perax.models.layers.Linear keeps a query
projection as ``[embed, heads, head_dim]``); ``A`` contracts all input dimensions. ``A`` and ``B``
are ``nnx.LoRAParam`` (a subclass of ``nnx.Param``), which is how the trainer tells adapters from
base weights. The base layer is kept intact as the ``base`` attribute.

A linear layer inside a stacked layer stack (perax.models.layer_stack) has a kernel with a leading
'layers' axis; its adapters get the same leading axis (one independent adapter per layer), so the
stack's scan slices base weights and adapters together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from perax.models.layer_stack import LAYERS_AXIS

LORA_AXIS = 'lora_rank'


def _axes(kernel: nnx.Variable) -> tuple:
  metadata = kernel.get_metadata()
  return tuple(metadata.get('logical_axes') or metadata.get('out_sharding') or (None,) * kernel.ndim)


class LoRALinear(nnx.Module):
  """A linear layer plus a low-rank update.

  Attributes:
    base: the original layer; maps ``[..., *in]`` to ``[..., *out]`` with a ``kernel [*in, *out]``
      (``num_in_dims`` input dimensions, 1 when the layer does not say), or ``[layers, *in, *out]``
      inside a layer stack.
    lora_a: ``[*in, rank]`` LoRAParam (``[layers, *in, rank]`` inside a stack).
    lora_b: ``[rank, *out]`` LoRAParam, zero at initialisation (``[layers, rank, *out]``).
    scale: alpha / rank.
  """

  def __init__(self, base: nnx.Module, *, rank: int, alpha: float, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if rank < 1:
      raise ValueError(f'LoRA rank must be >= 1, got {rank}')
    kernel = base.kernel
    self.num_in_dims = n = getattr(base, 'num_in_dims', 1)
    axes = _axes(kernel)
    lead = 1 if axes[:1] == (LAYERS_AXIS,) else 0  # the layer axis of a stacked kernel
    stack_shape, stack_axes = kernel.shape[:lead], axes[:lead]
    in_shape, out_shape = kernel.shape[lead : lead + n], kernel.shape[lead + n :]
    in_axes, out_axes = axes[lead : lead + n], axes[lead + n :]
    a_init = nnx.initializers.he_uniform(
      in_axis=tuple(range(lead, lead + n)), out_axis=lead + n, batch_axis=tuple(range(lead))
    )
    self.base = base
    self.lora_a = nnx.LoRAParam(
      a_init(rngs.params(), stack_shape + in_shape + (rank,), param_dtype),
      logical_axes=stack_axes + in_axes + (LORA_AXIS,),
    )
    self.lora_b = nnx.LoRAParam(
      jnp.zeros(stack_shape + (rank,) + out_shape, param_dtype),
      logical_axes=stack_axes + (LORA_AXIS,) + out_axes,
    )
    self.scale = alpha / rank

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[..., *in] -> [..., *out]``, in the dtype of ``base(x)``."""
    y = self.base(x)
    n = self.num_in_dims
    contract = tuple(range(x.ndim - n, x.ndim))
    low = jax.lax.dot_general(
      x.astype(y.dtype), self.lora_a[...].astype(y.dtype), ((contract, tuple(range(n))), ((), ()))
    )
    update = jnp.tensordot(low, self.lora_b[...].astype(y.dtype), axes=1)
    return y + update * jnp.asarray(self.scale, y.dtype)


def _path_str(path: Sequence[Any]) -> str:
  return '/'.join(str(p) for p in path)


def _matches(path: str, targets: Sequence[str]) -> bool:
  """Targets (regexes) match the end of a module path: 'q_proj' matches '.../q_proj'."""
  return any(re.search(rf'(^|/)(?:{t})$', path) for t in targets)


def apply_lora(
  model: nnx.Module,
  targets: Sequence[str],
  *,
  rank: int,
  alpha: float,
  param_dtype=jnp.float32,
  rngs: nnx.Rngs,
) -> list[str]:
  """Wraps every linear layer of ``model`` whose path matches a target in :class:`LoRALinear`.

  Args:
    model: the model, changed in place.
    targets: regexes matched against the end of '/'-joined module paths, e.g. ``('q_proj',
      'v_proj')`` (every such layer, audio encoder included) or ``('language_model/.*/q_proj',)``.
    rank, alpha: the adapters' rank and scaling numerator.
    param_dtype: the adapters' dtype (keep float32: they are master weights).
    rngs: draws the ``A`` matrices.

  Returns:
    The paths of the adapted layers, sorted.

  Raises:
    ValueError: no layer matched, or a matched module has no ``kernel`` parameter.
  """
  found = []
  for path, node in nnx.iter_graph(model):
    if not path or not isinstance(node, nnx.Module) or isinstance(node, LoRALinear):
      continue
    if _matches(_path_str(path), targets):
      if not isinstance(getattr(node, 'kernel', None), nnx.Variable):
        raise ValueError(f'LoRA target {_path_str(path)} has no kernel')
      found.append(tuple(path))
  if not found:
    raise ValueError(f'no layer matches LoRA targets {list(targets)}')
  for path in found:
    parent = model
    for key in path[:-1]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    base = parent[path[-1]] if isinstance(path[-1], int) else getattr(parent, path[-1])
    adapted = LoRALinear(base, rank=rank, alpha=alpha, param_dtype=param_dtype, rngs=rngs)
    if isinstance(path[-1], int):
      parent[path[-1]] = adapted
    else:
      setattr(parent, path[-1], adapted)
  return sorted(_path_str(p) for p in found)
