"""Qwen2-Audio in Flax NNX: audio encoder, projector, Qwen2 decoder and lm_head, HF-named.

Module paths follow HF's original checkpoint names (``audio_tower.layers.self_attn.q_proj``,
``multi_modal_projector.linear``, ``language_model.layers.mlp.gate_proj``, ``lm_head``), except that
each stack's N layers are one module with a leading layer axis (perax.models.layer_stack), so
perax.models.convert maps names with one table plus the layer index.

Typical use (prompt built by HF's processor, features by perax.data.features.batch_features):

  audio_embeds, audio_valid = model.encode_audio(features, feature_lengths)
  embeds = model.merge_audio(input_ids, audio_embeds, audio_valid)
  out = model(inputs_embeds=embeds, positions=positions, attention_mask=mask, cache=cache)
  out.logits, out.hidden_states, out.cache  # a Qwen2AudioOutput
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from perax.models import activation_sharding
from perax.models.audio_encoder import Qwen2AudioEncoder
from perax.models.cache import KVCache
from perax.models.config import Qwen2AudioConfig
from perax.models.layers import Linear
from perax.models.qwen2 import Qwen2Model, attention_mask_for


@struct.dataclass
class Qwen2AudioOutput:
  """What one decoder forward pass returns (a frozen pytree, so jitted functions return it whole).

  Attributes:
    logits: ``[B, L, vocab]`` float32, or ``[B, P, vocab]`` when the call passed ``logits_at``.
    hidden_states: ``[B, L, hidden]`` final normed hidden states of all L new tokens, in the
      compute dtype (under jit, unused outputs cost nothing).
    cache: the :class:`KVCache` with the new tokens written and its index advanced by L, or None
      when the call passed no cache.
  """

  logits: jax.Array
  hidden_states: jax.Array
  cache: KVCache | None = None


class Qwen2AudioMultiModalProjector(nnx.Module):
  """One linear layer from the encoder's width to the decoder's."""

  def __init__(self, config: Qwen2AudioConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.linear = Linear(
      config.audio.d_model,
      config.text.hidden_size,
      use_bias=True,
      in_axes=('audio_embed',),
      out_axes=('embed',),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear(x)


class Qwen2AudioForConditionalGeneration(nnx.Module):
  """The whole model.

  Attributes:
    audio_tower: :class:`Qwen2AudioEncoder`.
    multi_modal_projector: :class:`Qwen2AudioMultiModalProjector`.
    language_model: :class:`Qwen2Model` (HF ``language_model.model``).
    lm_head: ``Linear [hidden, vocab]``, or None when tied to ``language_model.embed_tokens``.
  """

  def __init__(
    self,
    config: Qwen2AudioConfig,
    *,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype | None = None,
    rngs: nnx.Rngs,
  ):
    """Builds a randomly initialised model (load weights with perax.models.loading.load_model).

    Args:
      config: hyper-parameters.
      dtype: compute dtype (activations, matmul inputs); logits are always float32.
      param_dtype: storage dtype of the parameters; defaults to ``dtype``.
      rngs: initialisation randomness.
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config = config
    self.dtype = dtype
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    stacks = dict(
      attention_impl=config.attention_impl,
      scan_layers=config.scan_layers,
      remat_policy=config.remat_policy,
      **common,
    )
    self.audio_tower = Qwen2AudioEncoder(config.audio, **stacks)
    self.multi_modal_projector = Qwen2AudioMultiModalProjector(config, **common)
    self.language_model = Qwen2Model(config.text, **stacks)
    self.lm_head = (
      None
      if config.tie_word_embeddings
      else Linear(
        config.text.hidden_size,
        config.text.vocab_size,
        use_bias=False,
        in_axes=('embed',),
        out_axes=('vocab',),
        **common,
      )
    )

  def encode_audio(
    self, input_features: jax.Array, feature_lengths: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Audio embeddings in the decoder's space.

    Args:
      input_features: ``[B, 128, F]`` log-mel features, F even and at most 3000. Features padded
        to a bucket shorter than 30 s give HF's embeddings exactly when ``F`` is at least
        perax.models.audio_encoder.exact_frames(L).
      feature_lengths: ``[B]`` int valid frames per clip.

    Returns:
      audio_embeds: ``[B, F // 4, hidden]`` in the compute dtype.
      audio_valid: ``[B, F // 4]`` bool; clip ``b`` has ``((L - 1) // 2 + 1 - 2) // 2 + 1`` valid
        tokens first, exactly the number of ``<|AUDIO|>`` tokens HF's processor writes for it.
    """
    hidden, valid = self.audio_tower(input_features, feature_lengths)
    return self.multi_modal_projector(hidden), valid

  def merge_audio(self, input_ids: jax.Array, audio_embeds: jax.Array, audio_valid: jax.Array) -> jax.Array:
    """Token embeddings with the audio embeddings written over the ``<|AUDIO|>`` tokens.

    As HF's ``masked_scatter``: the valid embeddings of all clips, in order (clip 0's valid tokens,
    then clip 1's, ...), fill the audio-token positions of the flattened batch in order. With one
    clip per row and the processor's prompt, row ``b``'s audio tokens receive clip ``b``.

    While an activation mesh is active (perax.models.activation_sharding) and there is one clip
    per row (N == B), row ``b``'s audio tokens read clip ``b``'s valid embeddings in order, a
    gather within each row that keeps the batch split over the mesh (the batch-wide order would
    gather every device's rows). The two agree whenever every row holds as many audio tokens as
    its clip has valid embeddings, as the processor's one-audio prompts always do.

    Args:
      input_ids: ``[B, L]`` int.
      audio_embeds: ``[N, A, hidden]`` from :meth:`encode_audio`.
      audio_valid: ``[N, A]`` bool.

    Returns:
      ``[B, L, hidden]`` in the compute dtype. The number of audio tokens must equal
      ``audio_valid.sum()``; this is not checked inside jit (surplus audio tokens receive an
      arbitrary audio embedding).
    """
    token_embeds = activation_sharding.constrain(self.language_model.embed_tokens(input_ids))
    batch, length, hidden = token_embeds.shape
    is_audio = input_ids == self.config.audio_token_id
    audio_embeds = audio_embeds.astype(token_embeds.dtype)
    if activation_sharding.current_mesh() is not None and audio_embeds.shape[0] == batch:
      slots = audio_valid.shape[1]
      # source[b, k] = the slot of clip b's k-th valid embedding.
      rank = jnp.cumsum(audio_valid, axis=1) - 1
      rows = jnp.arange(batch)[:, None]
      source = (
        jnp.zeros((batch, slots), jnp.int32)
        .at[rows, jnp.where(audio_valid, rank, slots)]
        .set(jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (batch, slots)), mode='drop')
      )
      token_rank = jnp.clip(jnp.cumsum(is_audio, axis=1) - 1, 0, slots - 1)
      slot = jnp.take_along_axis(source, token_rank, axis=1)
      gathered = jnp.take_along_axis(audio_embeds, slot[:, :, None], axis=1)
      return activation_sharding.constrain(jnp.where(is_audio[:, :, None], gathered, token_embeds))
    flat_audio = audio_embeds.reshape(-1, hidden)
    valid = audio_valid.reshape(-1)
    slots = valid.shape[0]
    # source[k] = flat index of the k-th valid audio embedding.
    rank = jnp.cumsum(valid) - 1
    source = (
      jnp.zeros((slots,), jnp.int32)
      .at[jnp.where(valid, rank, slots)]
      .set(jnp.arange(slots, dtype=jnp.int32), mode='drop')
    )
    flat_is_audio = is_audio.reshape(-1)
    token_rank = jnp.clip(jnp.cumsum(flat_is_audio) - 1, 0, slots - 1)
    merged = jnp.where(
      flat_is_audio[:, None], flat_audio[source[token_rank]], token_embeds.reshape(-1, hidden)
    )
    return merged.reshape(batch, length, hidden)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """``hidden [..., hidden] -> [..., vocab]`` logits (lm_head or the tied embedding), computed
    in the compute dtype as HF does and returned as float32."""
    if self.lm_head is None:
      return self.language_model.embed_tokens.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)

  def __call__(
    self,
    input_ids: jax.Array | None = None,
    *,
    inputs_embeds: jax.Array | None = None,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    logits_at: jax.Array | None = None,
  ) -> Qwen2AudioOutput:
    """Decoder forward pass over ``L`` new tokens.

    Args:
      input_ids: ``[B, L]`` int, or None when ``inputs_embeds`` is given (exactly one of them).
        Ids are embedded as text, ``<|AUDIO|>`` included (as in HF's decode steps); prompts with
        audio go through :meth:`merge_audio` and ``inputs_embeds``.
      inputs_embeds: ``[B, L, hidden]`` (e.g. from :meth:`merge_audio`).
      positions: ``[B, L]`` int32 RoPE positions, ``cumsum(attention_mask) - 1`` for a fresh
        prompt. Required with a cache; without one it defaults to that formula.
      attention_mask: ``[B, L]`` bool, True for real tokens; None means all real. Left or right
        padding both work: every real token attends the real tokens at or before it.
      cache: a :class:`KVCache` (see perax.models.cache), or None for a plain forward pass.
      logits_at: optional ``[B, P]`` int indices into the L new tokens; logits are then computed
        only there (e.g. the last prompt token), saving the ``[B, L, vocab]`` projection.

    Returns:
      A :class:`Qwen2AudioOutput` (logits, hidden_states, cache).
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError('pass exactly one of input_ids and inputs_embeds')
    if inputs_embeds is None:
      inputs_embeds = self.language_model.embed_tokens(input_ids)
    inputs_embeds = inputs_embeds.astype(self.dtype)
    batch, length = inputs_embeds.shape[:2]
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), jnp.bool_)
    attention_mask = attention_mask.astype(jnp.bool_)
    if positions is None:
      if cache is not None:
        raise ValueError('positions are required with a cache')
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)

    if cache is None:
      attend = attention_mask_for(attention_mask)
      hidden, _ = self.language_model(inputs_embeds, positions, attend)
      new_cache = None
    else:
      slot_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.index))
      attend = attention_mask_for(attention_mask, slot_mask, cache.index)
      hidden, (keys, values) = self.language_model(
        inputs_embeds, positions, attend, (cache.keys, cache.values), cache.index
      )
      new_cache = KVCache(keys=keys, values=values, mask=slot_mask, index=cache.index + length)

    selected = hidden if logits_at is None else jnp.take_along_axis(hidden, logits_at[:, :, None], axis=1)
    return Qwen2AudioOutput(logits=self.logits(selected), hidden_states=hidden, cache=new_cache)
