"""The Qwen2 decoder (HF ``Qwen2Model``: embed_tokens, layers, norm), with an optional KV cache.

Attention is causal over the tokens a row marks valid. Callers pass one boolean mask per forward
pass, ``attend [B, L, S]`` (query ``l`` may read key ``s``), built by :func:`attention_mask_for`
from the padding mask and, when decoding, the cache's slots (contract in perax.models.cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from perax.models import activation_sharding, layer_stack
from perax.models.cache import SharedPrefixLayer
from perax.models.config import TextConfig
from perax.models.layers import Embed, Linear, RMSNorm, apply_rope, dot_product_attention

# One layer's cache entry: keys and values, each [B, max_len, KV, D] (or, for rows continuing a
# shared prompt, each a perax.models.cache.SharedPrefixLayer holding that layer's slices).
LayerCache = tuple[jax.Array, jax.Array] | tuple[SharedPrefixLayer, SharedPrefixLayer]


def attention_mask_for(
  attention_mask: jax.Array, cache_mask: jax.Array | None = None, index: jax.Array | None = None
) -> jax.Array:
  """Which keys each new token may attend.

  Args:
    attention_mask: ``[B, L]`` bool, True for the new tokens that are real (not padding).
    cache_mask: ``[B, S]`` bool, the cache's valid slots after the new tokens were written; None
      without a cache (keys are then the L new tokens).
    index: int32 scalar, the slot of the first new token (with a cache).

  Returns:
    ``[B, L, S]`` bool (S = L without a cache): key is valid and its slot <= the query's slot.
  """
  length = attention_mask.shape[1]
  if cache_mask is None:
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    return attention_mask[:, None, :] & causal[None]
  query_slots = index + jnp.arange(length)
  key_slots = jnp.arange(cache_mask.shape[1])
  return cache_mask[:, None, :] & (key_slots[None, None, :] <= query_slots[None, :, None])


class Qwen2Attention(nnx.Module):
  """Grouped-query self-attention with RoPE; q/k/v with bias, o_proj without.

  ``attention_impl`` (perax.models.config.ATTENTION_IMPLS) is fixed at construction.
  """

  def __init__(
    self, config: TextConfig, *, attention_impl: str = 'einsum', dtype, param_dtype, rngs: nnx.Rngs
  ):
    self.config = config
    self.attention_impl = attention_impl
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads, kv_heads, head_dim = (config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    self.q_proj = Linear(
      config.hidden_size,
      (heads, head_dim),
      use_bias=True,
      in_axes=('embed',),
      out_axes=('heads', 'head_dim'),
      **common,
    )
    self.k_proj = Linear(
      config.hidden_size,
      (kv_heads, head_dim),
      use_bias=True,
      in_axes=('embed',),
      out_axes=('kv_heads', 'head_dim'),
      **common,
    )
    self.v_proj = Linear(
      config.hidden_size,
      (kv_heads, head_dim),
      use_bias=True,
      in_axes=('embed',),
      out_axes=('kv_heads', 'head_dim'),
      **common,
    )
    self.o_proj = Linear(
      (heads, head_dim),
      config.hidden_size,
      use_bias=False,
      in_axes=('heads', 'head_dim'),
      out_axes=('embed',),
      **common,
    )

  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    attend: jax.Array,
    cache: LayerCache | None,
    index: jax.Array | None,
  ) -> tuple[jax.Array, LayerCache | None]:
    """``x [B, L, hidden]`` -> (``[B, L, hidden]``, updated layer cache or None).

    With a cache, the new keys/values are written at slots ``[index, index + L)`` and attention
    reads all ``S`` slots; without one it reads the ``L`` new tokens.
    """
    theta = self.config.rope_theta
    query = apply_rope(self.q_proj(x), positions, theta)
    key = apply_rope(self.k_proj(x), positions, theta)
    value = self.v_proj(x)
    if cache is not None and isinstance(cache[0], SharedPrefixLayer):
      keys, values = cache
      start = (0, index, 0, 0)
      keys = keys.replace(
        suffix=jax.lax.dynamic_update_slice(keys.suffix, key.astype(keys.suffix.dtype), start)
      )
      values = values.replace(
        suffix=jax.lax.dynamic_update_slice(values.suffix, value.astype(values.suffix.dtype), start)
      )
      out = shared_prefix_attention(query, keys, values, attend, scale=self.config.head_dim**-0.5)
      return self.o_proj(out), (keys, values)
    if cache is not None:
      cached_keys, cached_values = cache
      start = (0, index, 0, 0)
      cached_keys = jax.lax.dynamic_update_slice(cached_keys, key.astype(cached_keys.dtype), start)
      cached_values = jax.lax.dynamic_update_slice(cached_values, value.astype(cached_values.dtype), start)
      cache = (cached_keys, cached_values)
      key, value = cached_keys.astype(x.dtype), cached_values.astype(x.dtype)
    out = dot_product_attention(
      query,
      key,
      value,
      attend,
      scale=self.config.head_dim**-0.5,
      implementation=self.attention_impl,
    )
    return self.o_proj(out), cache


def shared_prefix_attention(
  query: jax.Array,
  keys: SharedPrefixLayer,
  values: SharedPrefixLayer,
  suffix_attend: jax.Array,
  scale: float,
) -> jax.Array:
  """Exact attention over [the clip's shared prefix ; the row's own suffix], one softmax for both.

  The ``R`` rows continuing clip ``b`` read one copy of its prefix: their queries are stacked into
  ``R * L`` queries against ``[P]`` prefix keys (one matmul per clip, no repeated prefix), and each row
  reads its own ``[T]`` suffix keys. The two score blocks share one maximum and one denominator, so the
  result is the softmax over the concatenated keys (a two-part log-sum-exp merge). Scores and softmax
  are float32; the probabilities are cast to the values' dtype before the value products, as in
  perax.models.layers.dot_product_attention.

  Args:
    query: ``[B * R, L, N, D]`` (row ``b * R + r`` continues clip ``b``).
    keys: prefix ``[B, P, K, D]`` (post-RoPE), prefix_mask ``[B, P]``, suffix ``[B * R, T, K, D]``
      with the new tokens already written; N is a multiple of K (HF's ``repeat_kv`` order).
    values: as ``keys``.
    suffix_attend: ``[B * R, L, T]`` bool, which suffix slots each query may read (every valid prefix
      slot is readable: the suffix follows the prompt).
    scale: multiplies the scores.

  Returns:
    ``[B * R, L, N, D]`` in the values' dtype. A query with no readable key gets zeros.
  """
  rows, length, heads, depth = query.shape
  batch, _, kv_heads, _ = keys.prefix.shape
  per_prefix, groups = rows // batch, heads // kv_heads
  grouped = query.reshape(batch, per_prefix, length, kv_heads, groups, depth)
  suffix_keys = keys.suffix.reshape(batch, per_prefix, -1, kv_heads, depth)
  suffix_values = values.suffix.reshape(batch, per_prefix, -1, kv_heads, depth)
  f32 = jnp.float32
  prefix_scores = jnp.einsum(
    'brlkgd,bpkd->bkgrlp', grouped, keys.prefix.astype(query.dtype), preferred_element_type=f32
  )
  suffix_scores = jnp.einsum(
    'brlkgd,brtkd->bkgrlt', grouped, suffix_keys.astype(query.dtype), preferred_element_type=f32
  )
  prefix_ok = keys.prefix_mask[:, None, None, None, None, :]
  suffix_ok = suffix_attend.reshape(batch, per_prefix, length, -1)[:, None, None]
  lowest = jnp.finfo(f32).min
  prefix_scores = jnp.where(prefix_ok, prefix_scores * scale, lowest)
  suffix_scores = jnp.where(suffix_ok, suffix_scores * scale, lowest)
  peak = jnp.maximum(prefix_scores.max(-1, keepdims=True), suffix_scores.max(-1, keepdims=True))
  prefix_weights = jnp.where(prefix_ok, jnp.exp(prefix_scores - peak), 0.0)
  suffix_weights = jnp.where(suffix_ok, jnp.exp(suffix_scores - peak), 0.0)
  total = prefix_weights.sum(-1, keepdims=True) + suffix_weights.sum(-1, keepdims=True)
  total = jnp.where(total > 0, total, 1.0)
  dtype = values.suffix.dtype
  out = jnp.einsum('bkgrlp,bpkd->brlkgd', (prefix_weights / total).astype(dtype), values.prefix)
  out = out + jnp.einsum('bkgrlt,brtkd->brlkgd', (suffix_weights / total).astype(dtype), suffix_values)
  return out.reshape(rows, length, heads, depth)


class Qwen2MLP(nnx.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases."""

  def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    up = dict(
      in_features=config.hidden_size,
      out_features=config.intermediate_size,
      use_bias=False,
      in_axes=('embed',),
      out_axes=('mlp',),
      **common,
    )
    self.gate_proj = Linear(**up)
    self.up_proj = Linear(**up)
    self.down_proj = Linear(
      config.intermediate_size,
      config.hidden_size,
      use_bias=False,
      in_axes=('mlp',),
      out_axes=('embed',),
      **common,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nnx.Module):
  """Pre-norm decoder layer: RMSNorm, attention, residual; RMSNorm, SwiGLU MLP, residual."""

  def __init__(
    self, config: TextConfig, *, attention_impl: str = 'einsum', dtype, param_dtype, rngs: nnx.Rngs
  ):
    norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_layernorm = RMSNorm(config.hidden_size, **norm)
    self.self_attn = Qwen2Attention(config, attention_impl=attention_impl, **common)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
    self.mlp = Qwen2MLP(config, **common)

  def __call__(self, x, positions, attend, cache, index):
    attn_out, cache = self.self_attn(self.input_layernorm(x), positions, attend, cache, index)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), cache


class Qwen2Model(nnx.Module):
  """Token embeddings, decoder layers and the final RMSNorm (no output projection).

  Attributes:
    layers: one :class:`Qwen2DecoderLayer` whose variables are stacked over the
      ``num_hidden_layers`` layers (perax.models.layer_stack), run as a scan or unrolled.
  """

  def __init__(
    self,
    config: TextConfig,
    *,
    attention_impl: str = 'einsum',
    scan_layers: bool = True,
    remat_policy: str = 'none',
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    common = dict(dtype=dtype, param_dtype=param_dtype)
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    self.embed_tokens = Embed(config.vocab_size, config.hidden_size, rngs=rngs, **common)
    self.layers = layer_stack.stack_layers(
      lambda layer_rngs: Qwen2DecoderLayer(config, attention_impl=attention_impl, rngs=layer_rngs, **common),
      config.num_hidden_layers,
      rngs,
    )
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **common)

  def __call__(
    self,
    inputs_embeds: jax.Array,
    positions: jax.Array,
    attend: jax.Array,
    cache: tuple[jax.Array, jax.Array] | tuple[SharedPrefixLayer, SharedPrefixLayer] | None = None,
    index: jax.Array | None = None,
  ):
    """Runs the decoder stack.

    Args:
      inputs_embeds: ``[B, L, hidden]`` in the compute dtype.
      positions: ``[B, L]`` int RoPE positions.
      attend: ``[B, L, S]`` bool from :func:`attention_mask_for`.
      cache: (keys, values), each ``[layers, B, S, KV, D]`` or a stacked
        :class:`perax.models.cache.SharedPrefixLayer`; or None.
      index: the slot of the first new token (with a cache).

    Returns:
      (final normed hidden states ``[B, L, hidden]``, updated (keys, values) or None). For a shared
      prefix only the suffixes are rewritten; the prefix arrays are returned as they came.
    """
    shared = cache is not None and isinstance(cache[0], SharedPrefixLayer)
    if shared:
      keys, values = cache
      # Only the suffix is scanned in and out: the (large) prefix is read, never copied.
      xs = (keys.prefix, keys.suffix, values.prefix, values.suffix)
    else:
      xs = cache

    def step(layer: Qwen2DecoderLayer, x: jax.Array, layer_xs):
      if shared:
        key_prefix, key_suffix, value_prefix, value_suffix = layer_xs
        layer_cache = (
          SharedPrefixLayer(prefix=key_prefix, prefix_mask=keys.prefix_mask, suffix=key_suffix),
          SharedPrefixLayer(prefix=value_prefix, prefix_mask=values.prefix_mask, suffix=value_suffix),
        )
      else:
        layer_cache = layer_xs
      x, layer_cache = layer(activation_sharding.constrain(x), positions, attend, layer_cache, index)
      if shared:
        return x, (layer_cache[0].suffix, layer_cache[1].suffix)
      return x, layer_cache

    x, written = layer_stack.run_layers(
      self.layers, step, inputs_embeds, xs, scan=self.scan_layers, remat_policy=self.remat_policy
    )
    if shared:
      written = (keys.replace(suffix=written[0]), values.replace(suffix=written[1]))
    return self.norm(x), written
