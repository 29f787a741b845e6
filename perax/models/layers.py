"""Building blocks shared by the audio encoder and the decoder, numerically matched to HF's code.

Every parameter is an ``nnx.Param`` (or :class:`FrozenWeight`) carrying ``logical_axes`` metadata,
one name per array dimension, which perax.models.sharding maps to mesh axes. Modules take
``dtype`` (the compute dtype: inputs and weights are cast to it) and ``param_dtype`` (the storage
dtype). Attention scores and softmax are always computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# HF's initializer_range: used only for models built without a checkpoint.
INIT_STDDEV = 0.02


class FrozenWeight(nnx.Variable):
  """A weight read from the checkpoint but never trained (not an ``nnx.Param``, so optimizers that
  update ``nnx.Param`` leave it alone), e.g. the audio encoder's sinusoidal position table."""


def _as_tuple(features: int | Sequence[int]) -> tuple[int, ...]:
  return (features,) if isinstance(features, int) else tuple(features)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
  return (INIT_STDDEV * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
  """``y = x @ kernel + bias`` with possibly multi-dimensional input and output features.

  The kernel is ``[*in_features, *out_features]`` (e.g. a query projection ``[embed, heads,
  head_dim]``), so HF's ``[out, in]`` weight converts by a transpose and a reshape.

  Attributes:
    kernel: ``nnx.Param [*in_features, *out_features]``, logical axes ``in_axes + out_axes``.
    bias: ``nnx.Param [*out_features]`` or None.
  """

  def __init__(
    self,
    in_features: int | Sequence[int],
    out_features: int | Sequence[int],
    *,
    use_bias: bool,
    in_axes: Sequence[str],
    out_axes: Sequence[str],
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    in_shape, out_shape = _as_tuple(in_features), _as_tuple(out_features)
    if len(in_axes) != len(in_shape) or len(out_axes) != len(out_shape):
      raise ValueError(f'axis names {in_axes} -> {out_axes} do not match shapes {in_shape} -> {out_shape}')
    self.num_in_dims = len(in_shape)
    self.dtype = dtype
    self.kernel = nnx.Param(
      _normal(rngs, in_shape + out_shape, param_dtype), logical_axes=tuple(in_axes) + tuple(out_axes)
    )
    self.bias = (
      nnx.Param(jnp.zeros(out_shape, param_dtype), logical_axes=tuple(out_axes)) if use_bias else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """``x [..., *in_features] -> [..., *out_features]`` in ``dtype``."""
    kernel = self.kernel[...].astype(self.dtype)
    contract = tuple(range(x.ndim - self.num_in_dims, x.ndim))
    y = jax.lax.dot_general(
      x.astype(self.dtype), kernel, ((contract, tuple(range(self.num_in_dims))), ((), ()))
    )
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding ``[vocab, embed]``; ``attend`` reuses it as a tied output projection."""

  def __init__(
    self, num_embeddings: int, features: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
  ):
    self.dtype = dtype
    self.embedding = nnx.Param(
      _normal(rngs, (num_embeddings, features), param_dtype), logical_axes=('vocab', 'embed')
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    """``ids [...] int -> [..., embed]`` in ``dtype``."""
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """``x [..., embed] -> [..., vocab]`` logits against the embedding matrix, in ``dtype``."""
    return jnp.einsum('...e,ve->...v', x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32 (as torch does for half inputs)."""

  def __init__(self, features: int, *, eps: float, axis_name: str, dtype: jnp.dtype, param_dtype: jnp.dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=(axis_name,))
    self.bias = nnx.Param(jnp.zeros((features,), param_dtype), logical_axes=(axis_name,))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """Qwen2's RMSNorm: normalise in float32, cast back to the compute dtype, then scale."""

  def __init__(self, features: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


class Conv1d(nnx.Module):
  """1-D convolution over time, ``[B, T, in] -> [B, T', out]`` with symmetric zero padding.

  Attributes:
    kernel: ``nnx.Param [width, in, out]`` (HF's torch layout is ``[out, in, width]``).
    bias: ``nnx.Param [out]``.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    width: int,
    stride: int,
    padding: int,
    in_axis: str,
    out_axis: str,
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.kernel = nnx.Param(
      _normal(rngs, (width, in_channels, out_channels), param_dtype),
      logical_axes=('conv_width', in_axis, out_axis),
    )
    self.bias = nnx.Param(jnp.zeros((out_channels,), param_dtype), logical_axes=(out_axis,))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      self.kernel[...].astype(self.dtype),
      window_strides=(self.stride,),
      padding=((self.padding, self.padding),),
      dimension_numbers=('NWC', 'WIO', 'NWC'),
    )
    return y + self.bias[...].astype(self.dtype)


def sinusoids(length: int, channels: int) -> np.ndarray:
  """Whisper's sinusoidal position table ``[length, channels]`` float32: sines then cosines."""
  log_increment = math.log(10000.0) / (channels // 2 - 1)
  inv_timescales = np.exp(-log_increment * np.arange(channels // 2, dtype=np.float64))
  scaled = np.arange(length, dtype=np.float64)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def rope_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
  """``[head_dim // 2]`` float32 ``1 / theta ** (2i / head_dim)``, rounded once from float64."""
  exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  return (1.0 / theta**exponents).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotate-half RoPE as HF's Qwen2 applies it.

  Args:
    x: ``[B, L, heads, head_dim]`` queries or keys.
    positions: ``[B, L]`` integer positions.
    theta: the RoPE base.

  Returns:
    ``[B, L, heads, head_dim]`` in x's dtype (cos and sin are computed in float32 and cast to it).
  """
  inv_freq = jnp.asarray(rope_inverse_frequencies(x.shape[-1], theta))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array,
  scale: float,
  implementation: str = 'einsum',
) -> jax.Array:
  """Masked softmax attention with grouped key/value heads; scores and softmax in float32.

  Args:
    query: ``[B, L, N, D]``.
    key: ``[B, S, K, D]`` with N a multiple of K; query head ``n`` uses key head ``n // (N // K)``
      (HF's ``repeat_kv`` order).
    value: ``[B, S, K, D]``.
    mask: bool, broadcastable to ``[B, L, S]``; True where a query may attend a key. A query with no
      allowed key gets the mean of the values (finite, like HF's additive-minimum mask).
    scale: multiplies the scores.
    implementation: one of perax.models.config.ATTENTION_IMPLS: 'einsum' (this function's
      einsums), or 'xla' / 'cudnn' for ``jax.nn.dot_product_attention`` (equal to 'einsum' within
      float rounding; 'cudnn' takes jax's restrictions, e.g. half-precision inputs on an NVIDIA GPU).
      Models take it from Qwen2AudioConfig.attention_impl at construction.

  Returns:
    ``[B, L, N, D]`` in value's dtype.
  """
  if implementation != 'einsum':
    return jax.nn.dot_product_attention(
      query,
      key.astype(query.dtype),
      value.astype(query.dtype),
      mask=mask[:, None],
      scale=scale,
      implementation=implementation,
    ).astype(value.dtype)
  batch, length, heads, depth = query.shape
  kv_heads = key.shape[2]
  grouped = query.reshape(batch, length, kv_heads, heads // kv_heads, depth)
  scores = jnp.einsum('blkgd,bskd->bkgls', grouped, key, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  out = jnp.einsum('bkgls,bskd->blkgd', probs, value)
  return out.reshape(batch, length, heads, depth)
