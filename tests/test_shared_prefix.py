"""Shared-prefix decoding: exact attention over [one prompt copy ; own suffix], and vote memory that
does not grow with K copies of the prompt cache."""

import numpy as np
from flax import nnx

from perax.models import cache as kv_cache
from perax.models.config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig
from perax.models.layers import dot_product_attention
from perax.models.qwen2 import shared_prefix_attention
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration
from perax.raters import decoding
from perax.raters import sampler as sampler_lib


def test_shared_prefix_attention_equals_attention_over_repeated_prefix():
  """The two-part softmax equals one softmax over [prefix repeated per row ; suffix]."""
  batch, rows_per, length, heads, kv_heads, depth, prefix_len, suffix_len = 2, 3, 2, 4, 2, 8, 5, 4
  rng = np.random.default_rng(0)
  query = rng.normal(size=(batch * rows_per, length, heads, depth)).astype(np.float32)
  prefix_k, prefix_v = rng.normal(size=(2, batch, prefix_len, kv_heads, depth)).astype(np.float32)
  suffix_k, suffix_v = rng.normal(size=(2, batch * rows_per, suffix_len, kv_heads, depth)).astype(np.float32)
  prefix_mask = np.array([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)  # left padding
  suffix_attend = rng.random((batch * rows_per, length, suffix_len)) < 0.6
  keys = kv_cache.SharedPrefixLayer(prefix=prefix_k, prefix_mask=prefix_mask, suffix=suffix_k)
  values = kv_cache.SharedPrefixLayer(prefix=prefix_v, prefix_mask=prefix_mask, suffix=suffix_v)
  got = shared_prefix_attention(query, keys, values, suffix_attend, scale=depth**-0.5)

  repeat = lambda x: np.repeat(x, rows_per, axis=0)  # noqa: E731
  full_k = np.concatenate([repeat(prefix_k), suffix_k], axis=1)
  full_v = np.concatenate([repeat(prefix_v), suffix_v], axis=1)
  full_mask = np.concatenate(
    [np.broadcast_to(repeat(prefix_mask)[:, None], (batch * rows_per, length, prefix_len)), suffix_attend],
    axis=2,
  )
  expected = dot_product_attention(query, full_k, full_v, full_mask, scale=depth**-0.5)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _abstract_model():
  config = Qwen2AudioConfig(
    audio=AudioEncoderConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32),
    text=TextConfig(
      vocab_size=512,
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=1,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
    ),
  )
  return nnx.eval_shape(lambda: Qwen2AudioForConditionalGeneration(config, rngs=nnx.Rngs(0)))


def test_vote_memory_does_not_hold_k_prompt_copies():
  """Compiled memory (temp + arguments) of K=32 votes of a 28 s clip stays near K=1's: far below the
  31 extra prompt-cache copies that repeating the prefix per vote needs."""
  model = _abstract_model()
  text = model.config.text
  prompt_length = decoding.prompt_bucket(700 + 60)  # 28 s of audio is 700 audio tokens
  peak = {}
  for votes in (1, 32):
    config = decoding.SamplingConfig(votes_per_clip=votes, max_new_tokens=8)
    compiled = sampler_lib.lower_sample_votes(
      model, config, batch_size=1, prompt_length=prompt_length, feature_frames=2800
    ).compile()
    memory = compiled.memory_analysis()
    peak[votes] = memory.temp_size_in_bytes + memory.argument_size_in_bytes
  # One clip's prompt cache: layers x (keys, values) x slots x kv_heads x head_dim float32 values.
  prompt_copy = text.num_hidden_layers * 2 * prompt_length * text.num_key_value_heads * text.head_dim * 4
  assert peak[32] - peak[1] < 0.1 * 31 * prompt_copy
  assert peak[32] - peak[1] < 0.5e9
