"""Stacked layers: one module holding N identical layers, run as a ``jax.lax.scan`` or unrolled.

Both stacks of Qwen2-Audio (the audio encoder's and the decoder's) keep their N layers as ONE module
whose every variable has a leading axis of size N, logical axis :data:`LAYERS_AXIS` (never split by
perax.models.sharding's rules, so each layer's weights keep their own fsdp / tensor split). The
parameter layout is the same however the stack runs:

- ``scan_layers=True``: a ``jax.lax.scan`` over the layer axis. XLA compiles ONE layer, so compile
  time and program size do not grow with depth (MaxText's ``scan_layers``);
- ``scan_layers=False``: a Python loop over static slices, one program per layer (as HF runs it).

Converted checkpoints, training checkpoints and LoRA adapters hold stacked arrays either way, so a
run may switch between the two without converting anything.

``remat_policy`` decides what each layer keeps for the backward pass (MaxText's names, JAX's
``jax.checkpoint_policies``); the rest is recomputed during the backward pass:

- ``'none'``: no rematerialisation, every intermediate is kept (fastest, most memory);
- ``'minimal'``: keep the matmul outputs without batch dimensions (the weight projections),
  recompute attention scores, softmax and elementwise work;
- ``'dots'``: keep every matmul output, attention's included;
- ``'full'``: keep only each layer's input (least memory, one extra forward pass).

Remat only matters under differentiation; a forward pass computes the same values with any policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

LAYERS_AXIS = 'layers'
REMAT_POLICIES = ('none', 'minimal', 'dots', 'full')
_POLICIES = {
  'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  'dots': jax.checkpoint_policies.dots_saveable,
  'full': jax.checkpoint_policies.nothing_saveable,
}

M = TypeVar('M', bound=nnx.Module)
# step(one layer's module, carry, that layer's slice of xs) -> (carry, that layer's output).
Step = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]


def stack_layers(make_layer: Callable[[nnx.Rngs], M], count: int, rngs: nnx.Rngs) -> M:
  """``count`` layers built by ``make_layer`` as one module with stacked variables.

  Every variable gets a leading axis of size ``count`` and :data:`LAYERS_AXIS` prepended to its
  ``logical_axes`` metadata; layer ``l`` draws its initial values from its own split of ``rngs``.
  Works under ``nnx.eval_shape`` (abstract models for conversion and planning).
  """

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(layer_rngs: nnx.Rngs) -> M:
    return make_layer(layer_rngs)

  stacked = create(rngs)
  for _, node in nnx.iter_graph(stacked):
    if isinstance(node, nnx.Variable):
      axes = node.get_metadata().get('logical_axes')
      if axes is not None:
        node.set_metadata(logical_axes=(LAYERS_AXIS,) + tuple(axes))
  return stacked


def stack_size(layers: nnx.Module) -> int:
  """N, the leading (layer) dimension shared by every variable of a stacked module."""
  sizes = {leaf.shape[0] for leaf in jax.tree.leaves(nnx.state(layers))}
  if len(sizes) != 1:
    raise ValueError(f'not a stacked module: leading dimensions {sorted(sizes)}')
  return sizes.pop()


def remat(fn: Callable, policy: str, *, prevent_cse: bool = True) -> Callable:
  """``fn`` under ``jax.checkpoint`` with the named policy (:data:`REMAT_POLICIES`); 'none': ``fn``."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f'remat_policy must be one of {REMAT_POLICIES}, got {policy!r}')
  if policy == 'none':
    return fn
  return jax.checkpoint(fn, policy=_POLICIES[policy], prevent_cse=prevent_cse)


def run_layers(
  layers: nnx.Module, step: Step, carry: Any, xs: Any = None, *, scan: bool, remat_policy: str = 'none'
) -> tuple[Any, Any]:
  """Folds ``step`` over the layers of a stacked module, in order.

  Args:
    layers: a module from :func:`stack_layers` (N layers).
    step: ``(layer, carry, x_l) -> (carry, y_l)``, where ``layer`` is layer ``l``'s module (its
      variables without the leading axis) and ``x_l`` is ``xs``' slice ``l``.
    carry: the value threaded through the layers (e.g. the hidden states ``[B, L, hidden]``).
    xs: a pytree whose leaves have a leading axis of size N (e.g. a stacked KV cache), or None.
    scan: ``jax.lax.scan`` (one compiled layer) or an unrolled loop over static slices.
    remat_policy: one of :data:`REMAT_POLICIES`, applied to each layer.

  Returns:
    (the final carry, the ``y_l`` stacked on a new leading axis of size N; None when they are None).
    Both modes give the same values up to float reassociation XLA may do in either.
  """
  graphdef, state = nnx.split(layers)

  def body(carry, inputs):
    layer_state, x = inputs
    return step(nnx.merge(graphdef, layer_state), carry, x)

  body = remat(body, remat_policy, prevent_cse=not scan)
  if scan:
    return jax.lax.scan(body, carry, (state, xs))
  outputs = []
  for index in range(stack_size(layers)):
    carry, y = body(carry, jax.tree.map(lambda leaf, index=index: leaf[index], (state, xs)))
    outputs.append(y)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)
