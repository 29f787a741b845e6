"""The decoder's key/value cache: fixed-size slots shared by the batch, stacked over layers.

Contract (the sampler relies on it):

- ``keys`` and ``values`` are ``[layers, B, max_len, num_key_value_heads, head_dim]``, one slice per
  decoder layer (the decoder's layers are stacked too, perax.models.layer_stack, so a scanned stack
  reads and writes its slice); keys are stored after RoPE.
- ``index`` (int32 scalar) is the next free slot, the same for every row. A forward pass over ``L``
  new tokens writes them at slots ``[index, index + L)`` and returns a cache with ``index + L``.
  The caller sizes ``max_len`` so that ``index + L <= max_len``; past that, XLA clamps the write
  position and the cache is silently wrong.
- ``mask`` ``[B, max_len]`` bool marks slots holding a real token (the new tokens' slots take the
  forward pass's ``attention_mask``). A query at slot ``s`` attends the valid slots ``<= s``.
- RoPE positions are not derived from slots: the caller passes them per row (for a left-padded
  prompt, ``positions = cumsum(attention_mask) - 1``; each decode step then adds one).

The cache is a pytree, so it passes through ``jax.jit`` and ``lax.while_loop`` and can be donated.

Shared-prefix decoding (:func:`shared_prefix_cache`): when ``R`` rows continue the same prompt (the K
votes of a clip, the C label continuations of score mode), the prompt's keys and values are kept
ONCE per clip and each row gets a small suffix of its own. The cache is then a :class:`KVCache`
whose ``keys`` / ``values`` are :class:`SharedPrefixLayer` entries (prefix and suffix stacked over
layers), and whose ``mask`` ``[B * R, T]`` and ``index`` describe the suffix slots (row ``b * R + r``
continues clip ``b``). The decoder's attention reads [the clip's prefix ; the row's own suffix] with
one exact softmax over both parts (perax.models.qwen2.shared_prefix_attention); new tokens are
written to the suffix only, and only the suffix is rewritten by a forward pass. A query at suffix
slot ``s`` attends every valid prefix slot and the valid suffix slots ``<= s``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perax.models import sharding
from perax.models.config import Qwen2AudioConfig


@struct.dataclass
class KVCache:
  """Per-layer keys and values in ``max_len`` slots, the valid-slot mask and the write index.

  Attributes:
    keys: ``[layers, B, max_len, KV, D]`` post-RoPE keys (or a :class:`SharedPrefixLayer`).
    values: ``[layers, B, max_len, KV, D]`` (or a :class:`SharedPrefixLayer`).
    mask: ``[B, max_len]`` bool, True where a slot holds a real (non-padding) token.
    index: int32 scalar, the first free slot.
  """

  keys: jax.Array | SharedPrefixLayer
  values: jax.Array | SharedPrefixLayer
  mask: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.mask.shape[1]

  @property
  def batch_size(self) -> int:
    return self.mask.shape[0]


@struct.dataclass
class SharedPrefixLayer:
  """Keys (or values) for rows that continue a shared prompt.

  In a :class:`KVCache` the prefix and suffix carry a leading layer axis; one decoder layer sees its
  slice (the shapes below without it). The mask is the same for every layer.

  Attributes:
    prefix: ``[layers, B, P, KV, D]``, one copy per clip of the prompt's keys (or values);
      read-only while decoding.
    prefix_mask: ``[B, P]`` bool, the prompt's valid (non-padding) slots.
    suffix: ``[layers, B * R, T, KV, D]``, each row's own tokens; row ``b * R + r`` continues clip
      ``b``.
  """

  prefix: jax.Array
  prefix_mask: jax.Array
  suffix: jax.Array

  @property
  def rows_per_prefix(self) -> int:
    return self.suffix.shape[-4] // self.prefix.shape[-4]


# Logical axes (perax.models.sharding) of cache arrays: keys/values [layers, B, S, KV, D], masks [B, S].
KV_AXES = ('layers', 'batch', 'cache_length', 'kv_heads', 'head_dim')
MASK_AXES = ('batch', 'cache_length')


def cache_shardings(cache: KVCache, mesh: Mesh) -> KVCache:
  """NamedShardings for every array of a cache (plain or shared-prefix, concrete or abstract), by
  the model's rules (perax.models.sharding): batch over (data, fsdp), key/value heads over tensor,
  the layer axis whole; the index replicated."""

  def spec(axes, x) -> NamedSharding:
    return NamedSharding(mesh, sharding.partition_spec(axes, x.shape, mesh))

  def entry(x):
    if isinstance(x, SharedPrefixLayer):
      return x.replace(
        prefix=spec(KV_AXES, x.prefix),
        prefix_mask=spec(MASK_AXES, x.prefix_mask),
        suffix=spec(KV_AXES, x.suffix),
      )
    return spec(KV_AXES, x)

  return cache.replace(
    keys=entry(cache.keys),
    values=entry(cache.values),
    mask=spec(MASK_AXES, cache.mask),
    index=NamedSharding(mesh, PartitionSpec()),
  )


def shared_prefix_cache(prefix: KVCache, rows_per_prefix: int, suffix_len: int) -> KVCache:
  """A cache for ``rows_per_prefix`` continuations of each row of a prefilled ``prefix`` cache.

  Args:
    prefix: a cache holding the prompts (``[B, P]`` slots; every slot past ``prefix.index`` unused).
    rows_per_prefix: R, continuations per prompt.
    suffix_len: T, suffix slots per continuation (tokens it may add).

  Returns:
    A :class:`KVCache` with :class:`SharedPrefixLayer` entries (module docstring): ``mask``
    ``[B * R, T]`` all False and ``index`` 0 (suffix slots). The prefix arrays are shared, never
    repeated: suffix memory is ``R * T / P`` times one prompt copy.
  """
  rows = prefix.batch_size * rows_per_prefix

  def shared(prompt: jax.Array) -> SharedPrefixLayer:
    layers, _, _, kv_heads, head_dim = prompt.shape
    suffix = jnp.zeros((layers, rows, suffix_len, kv_heads, head_dim), prompt.dtype)
    return SharedPrefixLayer(prefix=prompt, prefix_mask=prefix.mask, suffix=suffix)

  return KVCache(
    keys=shared(prefix.keys),
    values=shared(prefix.values),
    mask=jnp.zeros((rows, suffix_len), jnp.bool_),
    index=jnp.zeros((), jnp.int32),
  )


def init_cache(config: Qwen2AudioConfig, batch: int, max_len: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
  """An empty cache: zero keys/values, no valid slot, index 0.

  Args:
    config: the model's config (layers, key/value heads, head size).
    batch: rows B.
    max_len: slots per row; must cover prompt plus generated tokens.
    dtype: storage dtype of keys and values (the model's compute dtype is the natural choice).
  """
  text = config.text
  shape = (text.num_hidden_layers, batch, max_len, text.num_key_value_heads, text.head_dim)
  return KVCache(
    keys=jnp.zeros(shape, dtype),
    values=jnp.zeros(shape, dtype),
    mask=jnp.zeros((batch, max_len), jnp.bool_),
    index=jnp.zeros((), jnp.int32),
  )
