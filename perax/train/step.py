"""The jitted training and prediction steps, with explicit shardings and ahead-of-time compilation.

``make_train_step`` builds a pure function ``(TrainState, batch) -> (TrainState, metrics)`` over any
graph definition whose module maps a batch dict to ``[B, C]`` logits (perax.train.head's
DistributionalModel). The batch is split into ``num_microbatches`` strided micro-batches (rows
``k, k + n, k + 2n, ...``), so a device whose rows divide by n keeps its own rows and no data moves;
their gradients are summed in a ``lax.scan`` before one optimizer update. The loss of a step is the
mean per-example loss over the batch's real rows (``example_mask``; an epoch's last batch is
padded), whatever the number of micro-batches: each micro-batch contributes its masked loss sum,
and sums and gradients are divided by the batch's number of real rows once, at the end.

:class:`StepCompiler` jits a step with in/out shardings and donation, lowers and compiles it once
per distinct batch shape before it runs, and logs the compiled executable's memory analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perax.core import log
from perax.models import activation_sharding
from perax.train import losses
from perax.train.mesh import BATCH_AXES, batch_sharding, replicated
from perax.train.state import TrainState

# What the model and the loss read from a pipeline batch; other keys (utt_id, ...) stay on the host.
MODEL_INPUTS = ('input_features', 'feature_lengths', 'input_ids', 'attention_mask', 'positions')
TRAIN_INPUTS = MODEL_INPUTS + ('targets', 'example_mask')

Batch = Mapping[str, jax.Array]


def split_microbatches(batch: Batch, num_microbatches: int) -> dict[str, jax.Array]:
  """[B, ...] arrays -> [n, B / n, ...], micro-batch k holding rows k, k + n, ... (strided)."""

  def split(x):
    rows = x.shape[0]
    if rows % num_microbatches:
      raise ValueError(f'batch of {rows} rows does not split into {num_microbatches} micro-batches')
    x = x.reshape((rows // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return {k: split(v) for k, v in batch.items()}


def make_train_step(
  graphdef: nnx.GraphDef,
  *,
  loss: str,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  mesh: Mesh,
  num_microbatches: int = 1,
  class_weights: np.ndarray | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """A training step: mean loss over the batch, averaged micro-batch gradients, one AdamW update.

  Args:
    graphdef: the model's graph definition; ``nnx.merge(graphdef, params, frozen)(batch)`` returns
      [B, C] logits.
    loss: a name in perax.train.losses.LOSSES.
    tx: the optimizer over the trainable parameters.
    schedule: the learning-rate schedule, for the ``learning_rate`` metric.
    mesh: the device mesh; micro-batches stay split over its batch axes.
    num_microbatches: gradient-accumulation steps per update; divides the per-device batch.
    class_weights: [C] per-class loss weights, or None.

  Returns:
    ``step(state, batch) -> (new_state, metrics)``; metrics are float32 scalars ``loss``,
    ``grad_norm`` (before clipping), ``learning_rate`` (the rate this update used) and
    ``examples`` (real rows in the batch).
  """
  loss_fn = losses.get_loss(loss)
  weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  micro_sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))

  def loss_sum(params, frozen, micro):
    with activation_sharding.active(mesh):
      logits = nnx.merge(graphdef, params, frozen)(micro)
    per_example = loss_fn(logits, micro['targets'], weights)
    return jnp.sum(jnp.where(micro['example_mask'], per_example, 0.0))

  grad_fn = jax.value_and_grad(loss_sum)

  def step(state: TrainState, batch: Batch):
    micro = split_microbatches({k: batch[k] for k in TRAIN_INPUTS}, num_microbatches)
    micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

    def accumulate(carry, one):
      total, grad_total = carry
      value, grads = grad_fn(state.params, state.frozen, one)
      return (total + value, jax.tree.map(jnp.add, grad_total, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (total, grad_total), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), micro)
    examples = jnp.maximum(batch['example_mask'].sum(), 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / examples, grad_total)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      'loss': total / examples,
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': jnp.asarray(schedule(state.step), jnp.float32),
      'examples': examples,
    }
    return TrainState(step=state.step + 1, params=params, frozen=state.frozen, opt_state=opt_state), metrics

  return step


def make_predict_step(
  graphdef: nnx.GraphDef, mesh: Mesh | None = None
) -> Callable[[nnx.State, nnx.State, Batch], jax.Array]:
  """``predict(params, frozen, batch) -> [B, C]`` float32 predicted distributions (softmax); with a
  mesh, activations keep the batch split over it (perax.models.activation_sharding)."""

  def predict(params, frozen, batch):
    inputs = {k: batch[k] for k in MODEL_INPUTS}
    with activation_sharding.active(mesh):
      logits = nnx.merge(graphdef, params, frozen)(inputs)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return predict


def device_batch(batch: Mapping[str, Any], keys: tuple[str, ...], mesh: Mesh) -> dict[str, jax.Array]:
  """The ``keys`` of a host batch as global arrays split over the mesh's batch axes.

  Each process passes its own rows (``jax.make_array_from_process_local_data``), so the same code
  serves one host and many.
  """
  sharding = batch_sharding(mesh)
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f'batch lacks {missing}; it has {sorted(batch)}')
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


def _shape_key(tree) -> tuple:
  return tuple(
    (jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype))
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  )


def _abstract(tree, shardings) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def memory_summary(compiled) -> str:
  """One line from ``compiled.memory_analysis()`` (bytes per device), or why it is unavailable."""
  stats = compiled.memory_analysis()
  if stats is None:
    return 'memory analysis unavailable on this backend'
  fields = (
    'argument_size_in_bytes',
    'output_size_in_bytes',
    'alias_size_in_bytes',
    'temp_size_in_bytes',
    'generated_code_size_in_bytes',
  )
  return ', '.join(
    f'{f.removesuffix("_size_in_bytes")} {getattr(stats, f) / 2**20:.1f} MiB'
    for f in fields
    if hasattr(stats, f)
  )


class StepCompiler:
  """Compiles a jitted step ahead of time, once per distinct batch shape, and runs it.

  Attributes:
    jitted: the ``jax.jit``-wrapped step.
    executables: compiled executables by batch shape.
    memory: the memory-analysis line of each compiled executable, by batch shape.
  """

  def __init__(
    self,
    fn: Callable,
    *,
    arg_shardings: tuple,
    mesh: Mesh,
    out_shardings: Any,
    donate_argnums: tuple[int, ...] = (),
    name: str = 'step',
  ):
    """Wraps ``fn(*args, batch)``.

    Args:
      fn: the step; its last argument is the batch dict.
      arg_shardings: the shardings of the arguments before the batch (the train state, or
        params and frozen state), in order.
      mesh: the mesh; batches are split over its batch axes.
      out_shardings: shardings of the outputs.
      donate_argnums: arguments whose buffers the step may reuse (the train state).
      name: names the step in logs.
    """
    self._arg_shardings = tuple(arg_shardings)
    self.jitted = jax.jit(
      fn,
      in_shardings=self._arg_shardings + (batch_sharding(mesh),),
      out_shardings=out_shardings,
      donate_argnums=donate_argnums,
    )
    self.executables: dict[tuple, Any] = {}
    self.memory: dict[tuple, str] = {}
    self._name = name

  def compile(self, *args):
    """The executable for these arguments' shapes, lowering and compiling it on first use."""
    key = _shape_key(args[-1])
    if key not in self.executables:
      abstract = tuple(_abstract(a, s) for a, s in zip(args[:-1], self._arg_shardings))
      batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args[-1])
      compiled = self.jitted.lower(*abstract, batch).compile()
      self.executables[key] = compiled
      self.memory[key] = memory_summary(compiled)
      shapes = {k: tuple(v.shape) for k, v in args[-1].items()}
      if jax.process_index() == 0:
        log.info(f'compiled the {self._name} for batch {shapes}: {self.memory[key]}', stage='train')
    return self.executables[key]

  def __call__(self, *args):
    return self.compile(*args)(*args)


def train_step_compiler(step: Callable, state_shardings: Any, mesh: Mesh) -> StepCompiler:
  """A StepCompiler for ``step(state, batch)``: state in and out with its shardings, donated."""
  return StepCompiler(
    step,
    arg_shardings=(state_shardings,),
    mesh=mesh,
    out_shardings=(state_shardings, replicated(mesh)),
    donate_argnums=(0,),
    name='train step',
  )


def predict_step_compiler(
  predict: Callable, params_shardings: Any, frozen_shardings: Any, mesh: Mesh
) -> StepCompiler:
  """A StepCompiler for ``predict(params, frozen, batch)``; predictions come back split by row."""
  return StepCompiler(
    predict,
    arg_shardings=(params_shardings, frozen_shardings),
    mesh=mesh,
    out_shardings=batch_sharding(mesh),
    name='predict step',
  )
