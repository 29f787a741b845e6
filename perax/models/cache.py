"""The decoder's key/value cache: fixed-size slots shared by the batch.

Contract (the sampler relies on it):

- ``keys[l]`` and ``values[l]`` are ``[B, max_len, num_key_value_heads, head_dim]`` for decoder
  layer ``l``; keys are stored after RoPE.
- ``index`` (int32 scalar) is the next free slot, the same for every row. A forward pass over ``L``
  new tokens writes them at slots ``[index, index + L)`` and returns a cache with ``index + L``.
  The caller sizes ``max_len`` so that ``index + L <= max_len``; past that, XLA clamps the write
  position and the cache is silently wrong.
- ``mask`` ``[B, max_len]`` bool marks slots holding a real token (the new tokens' slots take the
  forward pass's ``attention_mask``). A query at slot ``s`` attends the valid slots ``<= s``.
- RoPE positions are not derived from slots: the caller passes them per row (for a left-padded
  prompt, ``positions = cumsum(attention_mask) - 1``; each decode step then adds one).

The cache is a pytree, so it passes through ``jax.jit`` and ``lax.while_loop`` and can be donated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from perax.models.config import Qwen2AudioConfig


@struct.dataclass
class KVCache:
  """Per-layer keys and values in ``max_len`` slots, the valid-slot mask and the write index.

  Attributes:
    keys: one ``[B, max_len, KV, D]`` array per decoder layer (post-RoPE keys).
    values: one ``[B, max_len, KV, D]`` array per decoder layer.
    mask: ``[B, max_len]`` bool, True where a slot holds a real (non-padding) token.
    index: int32 scalar, the first free slot.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.mask.shape[1]

  @property
  def batch_size(self) -> int:
    return self.mask.shape[0]


def init_cache(config: Qwen2AudioConfig, batch: int, max_len: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
  """An empty cache: zero keys/values, no valid slot, index 0.

  Args:
    config: the model's config (layers, key/value heads, head size).
    batch: rows B.
    max_len: slots per row; must cover prompt plus generated tokens.
    dtype: storage dtype of keys and values (the model's compute dtype is the natural choice).
  """
  text = config.text
  shape = (batch, max_len, text.num_key_value_heads, text.head_dim)
  layers = text.num_hidden_layers
  return KVCache(
    keys=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
    values=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
    mask=jnp.zeros((batch, max_len), jnp.bool_),
    index=jnp.zeros((), jnp.int32),
  )
