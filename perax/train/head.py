"""The distributional model: Qwen2-Audio backbone, a pooled hidden state, a head over the label set.

For a batch of prompts (input_ids with audio-token placeholders, log-mel features of the audio):

  audio embeddings = backbone.encode_audio(features)          [B, A, H]
  inputs_embeds    = backbone.merge_audio(input_ids, ...)     [B, L, H]
  hidden           = backbone(...).hidden_states              [B, L, H] (last decoder layer, normed)
  pooled           = pool(hidden)                             [B, H]
  logits           = head(pooled)                             [B, C]

The prediction is ``softmax(logits)``; only the head's output enters a loss, never the prompt's
tokens. Pooling ``'last'`` takes the last valid position of each row (the prompt's final token,
whatever the padding side); ``'audio_mean'`` averages the hidden states at the audio-token
positions.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from perax.models.config import Qwen2AudioConfig
from perax.models.layers import Linear

POOLINGS = ('last', 'audio_mean')
HEADS = ('linear', 'mlp')


def pool_last(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """The hidden state at each row's last valid position.

  Args:
    hidden: [B, L, H].
    attention_mask: [B, L] bool; every row has at least one valid position.

  Returns:
    [B, H] float32.
  """
  length = attention_mask.shape[1]
  last = length - 1 - jnp.argmax(attention_mask[:, ::-1], axis=1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def pool_audio_mean(
  hidden: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, audio_token_id: int
) -> jax.Array:
  """The mean hidden state over each row's valid audio-token positions.

  Args:
    hidden: [B, L, H].
    input_ids: [B, L] int; audio positions hold ``audio_token_id``.
    attention_mask: [B, L] bool.
    audio_token_id: id of the audio placeholder token.

  Returns:
    [B, H] float32 (zeros for a row without audio tokens).
  """
  weights = ((input_ids == audio_token_id) & attention_mask).astype(jnp.float32)
  total = jnp.einsum('bl,blh->bh', weights, hidden.astype(jnp.float32))
  return total / jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0)


class DistributionalHead(nnx.Module):
  """[B, H] pooled states -> [B, C] logits: a linear map, or a one-hidden-layer GELU MLP.

  Parameters and computation are float32 (the head is small; its precision is cheap). Weights start
  small (perax.models.layers' normal init), so the first predictions are close to uniform.
  """

  def __init__(
    self, hidden_size: int, num_classes: int, *, kind: str = 'linear', mlp_size: int = 256, rngs: nnx.Rngs
  ):
    if kind not in HEADS:
      raise ValueError(f'unknown head {kind!r}; expected one of {HEADS}')
    common = dict(use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    if kind == 'linear':
      self.hidden = None
      self.out = Linear(hidden_size, num_classes, in_axes=('embed',), out_axes=('classes',), **common)
    else:
      self.hidden = Linear(hidden_size, mlp_size, in_axes=('embed',), out_axes=('head_mlp',), **common)
      self.out = Linear(mlp_size, num_classes, in_axes=('head_mlp',), out_axes=('classes',), **common)

  def __call__(self, pooled: jax.Array) -> jax.Array:
    x = pooled.astype(jnp.float32)
    if self.hidden is not None:
      x = jax.nn.gelu(self.hidden(x))
    return self.out(x)


class DistributionalModel(nnx.Module):
  """Backbone + pooling + head. Called on a batch dict, returns [B, C] float32 logits.

  The batch holds ``input_features [B, 128, F]``, ``feature_lengths [B]``, ``input_ids [B, L]``,
  ``attention_mask [B, L]`` and ``positions [B, L]`` (other keys are ignored).
  """

  def __init__(
    self,
    backbone: nnx.Module,
    config: Qwen2AudioConfig,
    num_classes: int,
    *,
    pooling: str = 'last',
    head: str = 'linear',
    mlp_size: int = 256,
    rngs: nnx.Rngs,
  ):
    if pooling not in POOLINGS:
      raise ValueError(f'unknown pooling {pooling!r}; expected one of {POOLINGS}')
    self.backbone = backbone
    self.head = DistributionalHead(
      config.text.hidden_size, num_classes, kind=head, mlp_size=mlp_size, rngs=rngs
    )
    self.pooling = pooling
    self.audio_token_id = config.audio_token_id

  def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    input_ids = batch['input_ids']
    attention_mask = batch['attention_mask'].astype(jnp.bool_)
    audio_embeds, audio_valid = self.backbone.encode_audio(batch['input_features'], batch['feature_lengths'])
    inputs_embeds = self.backbone.merge_audio(input_ids, audio_embeds, audio_valid)
    hidden = self.backbone(
      inputs_embeds=inputs_embeds, positions=batch['positions'], attention_mask=attention_mask
    ).hidden_states
    if self.pooling == 'last':
      pooled = pool_last(hidden, attention_mask)
    else:
      pooled = pool_audio_mean(hidden, input_ids, attention_mask, self.audio_token_id)
    return self.head(pooled)
