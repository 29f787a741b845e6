"""Activation sharding constraints: the batch dimension stays split over (data, fsdp) inside the model.

With fsdp, parameters are split over the 'fsdp' axis on their 'embed' dimension. Left to itself,
XLA's sharding propagation may then keep a weight split and split the activations along the hidden
dimension instead, with all-reduces of whole micro-batches, and every device holds the full batch's
activations. Constraining the activations at layer boundaries to ``[batch over (data, fsdp), ...]``
makes it all-gather the (small, per-layer) weights instead: ZeRO-3's layout.

The constraints apply only while a mesh is active, i.e. while a function is traced inside
:func:`active`; without one :func:`constrain` returns its input, so single-device and
Hugging Face parity paths compile exactly as before:

  def loss_fn(params, batch):
    with activation_sharding.active(mesh):
      return model(batch)  # traced with the constraints
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from perax.models import sharding

# Logical axes of activations: only the batch (and tensor-parallel dimensions) are split; the
# hidden ('embed') dimension, split over fsdp in parameters, stays whole in activations.
ACTIVATION_RULES: sharding.Rules = (
  ('batch', ('data', 'fsdp')),
  ('heads', 'tensor'),
  ('kv_heads', 'tensor'),
  ('mlp', 'tensor'),
  ('audio_heads', 'tensor'),
  ('audio_mlp', 'tensor'),
  (sharding.CATCH_ALL, None),
)
# [B, L, hidden]: decoder and encoder hidden states, merged prompt embeddings.
BATCH_SEQUENCE_HIDDEN = ('batch', 'sequence', 'hidden')

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar('perax_activation_mesh', default=None)


@contextlib.contextmanager
def active(mesh: Mesh | None) -> Iterator[None]:
  """Applies the constraints to everything traced inside (None: no constraints)."""
  token = _MESH.set(mesh)
  try:
    yield
  finally:
    _MESH.reset(token)


def traced_in(mesh: Mesh | None) -> Callable[[Callable], Callable]:
  """Decorator: the function runs (and so is traced) inside :func:`active` for ``mesh``."""

  def decorate(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with active(mesh):
        return fn(*args, **kwargs)

    return wrapped

  return decorate


def traced_in_mesh_argument(fn: Callable) -> Callable:
  """Decorator: ``fn(..., mesh=m)`` runs inside :func:`active` for the ``m`` it is given (None: no
  constraints). For jitted programs that take their mesh as a static argument, so their traces always
  carry the constraints of the mesh in their cache key."""

  @functools.wraps(fn)
  def wrapped(*args, mesh: Mesh | None = None, **kwargs):
    with active(mesh):
      return fn(*args, mesh=mesh, **kwargs)

  return wrapped


def current_mesh() -> Mesh | None:
  """The mesh of the innermost :func:`active`, or None."""
  return _MESH.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None] = BATCH_SEQUENCE_HIDDEN) -> jax.Array:
  """``x`` constrained to its activation sharding on the active mesh; ``x`` itself without one.

  Args:
    x: an activation, one logical axis name per dimension.
    logical_axes: names looked up in :data:`ACTIVATION_RULES` (a dimension the mesh axes do not
      divide stays whole; see perax.models.sharding.partition_spec).
  """
  mesh = _MESH.get()
  if mesh is None:
    return x
  spec = sharding.partition_spec(logical_axes, x.shape, mesh, ACTIVATION_RULES)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
