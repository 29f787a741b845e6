"""The train state: trainable and frozen parameters apart, optimizer state for the trainable ones.

``nnx.split(model, trainable_filter, ...)`` cuts the model into its graph definition (static),
the trainable parameters and everything else (frozen). The optimizer is initialised over the
trainable part alone, so frozen weights carry no Adam moments. Scopes:

  head  the distributional head only (a frozen backbone, a linear probe or MLP on top);
  lora  the head and the LoRA adapters (``nnx.LoRAParam``, see perax.train.lora);
  full  every parameter.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

SCOPES = ('head', 'lora', 'full')

_HEAD = nnx.All(nnx.Param, nnx.PathContains('head'))


def trainable_filter(scope: str) -> nnx.filterlib.Filter:
  """The nnx filter selecting the parameters that ``scope`` trains."""
  if scope == 'head':
    return _HEAD
  if scope == 'lora':
    return nnx.Any(nnx.LoRAParam, _HEAD)
  if scope == 'full':
    return nnx.Param
  raise ValueError(f'unknown trainable scope {scope!r}; expected one of {SCOPES}')


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes (a pytree; donated to the jitted step).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: nnx.State of the trainable parameters (float32 master weights).
    frozen: nnx.State of every other model variable.
    opt_state: the optimizer's state over ``params``.
  """

  step: jax.Array
  params: nnx.State
  frozen: nnx.State
  opt_state: Any


def split_model(model: nnx.Module, scope: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable, frozen) of ``model`` for ``scope``; raises if nothing is trainable."""
  graphdef, params, frozen = nnx.split(model, trainable_filter(scope), ...)
  if not jax.tree.leaves(params):
    raise ValueError(f'trainable scope {scope!r} selects no parameter')
  return graphdef, params, frozen


def create_train_state(params: nnx.State, frozen: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """A fresh train state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params))


def count_parameters(state: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(state))
