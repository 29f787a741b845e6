"""Qwen2-Audio's Whisper-style audio encoder (HF ``Qwen2AudioEncoder``), for any bucket length.

HF always encodes 3000 feature frames (30 s) and masks, in every self-attention layer, the keys past
each clip's valid conv frames ``(L - 1) // 2 + 1`` (``L`` valid feature frames). The valid conv
frames read feature frames up to ``L + 1`` (for odd ``L``; ``L`` for even ``L``) through the two
width-3 convolutions, so a clip padded to a shorter bucket of ``F >= L + 2`` frames, whose padding
frames are the log-mel of the zero-padded waveform as in HF's 30 s input, gives HF's embeddings
exactly at its valid positions: the convolutions see the same frames, the position table is indexed
from 0 either way, and masked keys contribute nothing. With ``F < L + 2`` the convolution's zero
padding replaces log-mel padding frames and the last tokens differ slightly (HF itself zero-pads at
``L = 3000``).

Shapes: ``F`` (even) feature frames -> ``F // 2`` conv frames -> ``F // 4`` tokens (average pooling
by 2). Valid tokens per clip: ``((L - 1) // 2 + 1 - 2) // 2 + 1``, HF's
``_get_feat_extract_output_lengths``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from perax.data import features
from perax.models import activation_sharding, layer_stack
from perax.models.config import AUDIO_LAYER_NORM_EPS, AudioEncoderConfig
from perax.models.layers import Conv1d, FrozenWeight, LayerNorm, Linear, dot_product_attention, sinusoids


def conv_output_lengths(feature_lengths: jax.Array) -> jax.Array:
  """Valid frames after the stride-2 convolution: ``(L - 1) // 2 + 1`` per clip."""
  return (feature_lengths - 1) // 2 + 1


def exact_frames(feature_length: int, max_frames: int = 3000) -> int:
  """The fewest padded feature frames for which a clip's embeddings equal HF's 30 s ones exactly.

  A clip filling its bucket exactly (e.g. 2.00 s in the 2 s bucket) changes every token, because every
  query attends the last valid conv frame; see :func:`perax.data.features.encoder_frames_needed`.
  """
  return int(features.encoder_frames_needed(feature_length, max_frames))


def audio_token_lengths(feature_lengths: jax.Array) -> jax.Array:
  """Valid audio tokens (= ``<|AUDIO|>`` placeholders) per clip: ``(conv - 2) // 2 + 1``."""
  return (conv_output_lengths(feature_lengths) - 2) // 2 + 1


class Qwen2AudioAttention(nnx.Module):
  """Bidirectional multi-head self-attention; k_proj has no bias; queries are pre-scaled (as HF)."""

  def __init__(
    self, config: AudioEncoderConfig, *, attention_impl: str = 'einsum', dtype, param_dtype, rngs: nnx.Rngs
  ):
    heads, head_dim = config.encoder_attention_heads, config.head_dim
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    in_proj = dict(
      in_features=config.d_model,
      out_features=(heads, head_dim),
      in_axes=('audio_embed',),
      out_axes=('audio_heads', 'head_dim'),
      **common,
    )
    self.scale = head_dim**-0.5
    self.attention_impl = attention_impl
    self.q_proj = Linear(use_bias=True, **in_proj)
    self.k_proj = Linear(use_bias=False, **in_proj)
    self.v_proj = Linear(use_bias=True, **in_proj)
    self.out_proj = Linear(
      (heads, head_dim),
      config.d_model,
      use_bias=True,
      in_axes=('audio_heads', 'head_dim'),
      out_axes=('audio_embed',),
      **common,
    )

  def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
    """``x [B, T, d_model]``, ``key_valid [B, T]`` bool -> ``[B, T, d_model]``."""
    query = self.q_proj(x) * jnp.asarray(self.scale, x.dtype)
    out = dot_product_attention(
      query,
      self.k_proj(x),
      self.v_proj(x),
      key_valid[:, None, :],
      scale=1.0,
      implementation=self.attention_impl,
    )
    return self.out_proj(out)


class Qwen2AudioEncoderLayer(nnx.Module):
  """Pre-LN transformer layer: self-attention and a GELU feed-forward block, each residual."""

  def __init__(
    self, config: AudioEncoderConfig, *, attention_impl: str = 'einsum', dtype, param_dtype, rngs: nnx.Rngs
  ):
    norm = dict(eps=AUDIO_LAYER_NORM_EPS, axis_name='norm', dtype=dtype, param_dtype=param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_attn_layer_norm = LayerNorm(config.d_model, **norm)
    self.self_attn = Qwen2AudioAttention(config, attention_impl=attention_impl, **common)
    self.final_layer_norm = LayerNorm(config.d_model, **norm)
    self.fc1 = Linear(
      config.d_model,
      config.encoder_ffn_dim,
      use_bias=True,
      in_axes=('audio_embed',),
      out_axes=('audio_mlp',),
      **common,
    )
    self.fc2 = Linear(
      config.encoder_ffn_dim,
      config.d_model,
      use_bias=True,
      in_axes=('audio_mlp',),
      out_axes=('audio_embed',),
      **common,
    )

  def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.self_attn_layer_norm(x), key_valid)
    hidden = jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False)
    return x + self.fc2(hidden)


class Qwen2AudioEncoder(nnx.Module):
  """conv1 + GELU, conv2 (stride 2) + GELU, + positions, layers, average pool by 2, LayerNorm.

  Attributes:
    embed_positions: :class:`FrozenWeight` ``[max_source_positions, d_model]``, loaded from the
      checkpoint (initialised to Whisper's sinusoids).
    layers: one :class:`Qwen2AudioEncoderLayer` whose variables are stacked over the
      ``encoder_layers`` layers (perax.models.layer_stack), run as a scan or unrolled.
  """

  def __init__(
    self,
    config: AudioEncoderConfig,
    *,
    attention_impl: str = 'einsum',
    scan_layers: bool = True,
    remat_policy: str = 'none',
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.config = config
    self.dtype = dtype
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = Conv1d(
      config.num_mel_bins,
      config.d_model,
      width=3,
      stride=1,
      padding=1,
      in_axis='mel',
      out_axis='audio_embed',
      **common,
    )
    self.conv2 = Conv1d(
      config.d_model,
      config.d_model,
      width=3,
      stride=2,
      padding=1,
      in_axis='audio_conv_in',
      out_axis='audio_embed',
      **common,
    )
    self.embed_positions = FrozenWeight(
      jnp.asarray(sinusoids(config.max_source_positions, config.d_model), param_dtype),
      logical_axes=('audio_positions', 'audio_embed'),
    )
    self.layers = layer_stack.stack_layers(
      lambda layer_rngs: Qwen2AudioEncoderLayer(
        config, attention_impl=attention_impl, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs
      ),
      config.encoder_layers,
      rngs,
    )
    self.layer_norm = LayerNorm(
      config.d_model, eps=AUDIO_LAYER_NORM_EPS, axis_name='norm', dtype=dtype, param_dtype=param_dtype
    )

  def __call__(self, input_features: jax.Array, feature_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch of log-mel clips padded to a common length.

    Args:
      input_features: ``[B, num_mel_bins, F]`` log-mel features (HF layout); F even, at most
        ``config.max_feature_frames`` (3000).
      feature_lengths: ``[B]`` int, valid feature frames per clip (HF's
        ``feature_attention_mask.sum(-1)``).

    Returns:
      hidden: ``[B, F // 4, d_model]`` in the compute dtype (rows past a clip's valid tokens hold
        values computed from padding).
      valid: ``[B, F // 4]`` bool, True at each clip's first ``audio_token_lengths`` tokens.
    """
    frames = input_features.shape[-1]
    if frames % 2 or frames > self.config.max_feature_frames:
      raise ValueError(
        f'feature frames must be even and at most {self.config.max_feature_frames}, got {frames}'
      )
    conv_frames = frames // 2
    x = jnp.swapaxes(input_features, 1, 2)
    x = jax.nn.gelu(self.conv1(x), approximate=False)
    x = jax.nn.gelu(self.conv2(x), approximate=False)
    x = x + self.embed_positions[:conv_frames].astype(self.dtype)
    key_valid = jnp.arange(conv_frames)[None, :] < conv_output_lengths(feature_lengths)[:, None]

    def step(layer: Qwen2AudioEncoderLayer, x: jax.Array, _):
      return layer(activation_sharding.constrain(x), key_valid), None

    x, _ = layer_stack.run_layers(self.layers, step, x, scan=self.scan_layers, remat_policy=self.remat_policy)
    tokens = conv_frames // 2
    pooled = x[:, : 2 * tokens].reshape(x.shape[0], tokens, 2, x.shape[-1]).mean(axis=2)
    hidden = self.layer_norm(pooled)
    valid = jnp.arange(tokens)[None, :] < audio_token_lengths(feature_lengths)[:, None]
    return hidden, valid
