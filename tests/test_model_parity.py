"""perax's Flax Qwen2-Audio against transformers' torch implementation (CPU, float32, eager).

Each tiny random checkpoint (perax.models.tiny) is loaded by both; perax reads the HF directory
directly (converting on the fly). Bars: logits within 1e-4 (max abs) over whole prompts, audio
positions included; greedy continuations identical to ``generate(do_sample=False)``; KV-cache
decoding equal to a full forward pass; padded batches equal to single rows; bucketed audio encoding
equal to HF's 30 s encoding at the valid positions; bfloat16 within :data:`BF16_LOGIT_TOLERANCE`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from perax.core.errors import InputError
from perax.data import audio as audio_lib
from perax.data import features as features_lib
from perax.models import cache as cache_lib
from perax.models import loading, tiny
from perax.models.audio_encoder import exact_frames

FP32_TOLERANCE = 1e-4
CACHE_TOLERANCE = 2e-5
EMBED_TOLERANCE = 2e-5
# bfloat16 compute and parameters vs HF float32: max abs logit error over the prompt. Measured
# 0.072 on 'gqa4_2' and 0.070 on 'gqa6_1_tied_odd' (logits' standard deviation 1.0; argmax agrees
# at 97% of positions), against 0.090 for HF's own bfloat16 model on 'gqa4_2'.
BF16_LOGIT_TOLERANCE = 0.15
NEW_TOKENS = 16
SAMPLE_RATE = 16000

# Tiny configs (perax.models.tiny overrides): GQA ratios 4/2, 6/3, 6/1 and 4/4, tied and untied
# embeddings, odd widths and vocabulary, a sharded checkpoint.
CONFIGS = {
  'gqa4_2': {},
  'gqa6_3_sharded': dict(
    hidden_size=48, num_attention_heads=6, num_key_value_heads=3, intermediate_size=70, shards=3
  ),
  'gqa6_1_tied_odd': dict(
    hidden_size=36,
    num_attention_heads=6,
    num_key_value_heads=1,
    intermediate_size=45,
    num_hidden_layers=3,
    tie_word_embeddings=True,
    d_model=24,
    encoder_attention_heads=3,
    encoder_ffn_dim=40,
    encoder_layers=1,
  ),
  'mha4_4': dict(num_key_value_heads=4, vocab_size=1093, encoder_ffn_dim=50),
}
QUESTION = 'What emotion does the speaker express? Answer with the label only.'


def chat_prompt(processor, question=QUESTION):
  messages = [
    {'role': 'user', 'content': [{'type': 'audio', 'audio': 'clip.wav'}, {'type': 'text', 'text': question}]}
  ]
  return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def synthetic_clip(seconds: float, seed: int) -> np.ndarray:
  """A voiced-sounding clip: a few harmonics with vibrato plus noise, at 16 kHz."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  pitch = rng.uniform(100, 250) * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))
  phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
  wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
  return (wave + rng.normal(0, 0.02, t.size)).astype(np.float32)


@nnx.jit
def prompt_embeds(model, input_ids, features, feature_lengths):
  """Encode the clips and merge them into the prompt: [B, L, H]."""
  return model.merge_audio(input_ids, *model.encode_audio(features, feature_lengths))


@nnx.jit
def decoder_logits(model, embeds, attention_mask):
  """A full forward pass without cache: logits [B, L, V]."""
  return model(inputs_embeds=embeds, attention_mask=attention_mask).logits


def forward(model, input_ids, features, feature_lengths, attention_mask):
  """Encode, merge, full forward: logits [B, L, V] (two jitted parts, so the encoder's compilation
  is shared with the other tests)."""
  return decoder_logits(model, prompt_embeds(model, input_ids, features, feature_lengths), attention_mask)


@nnx.jit
def encode(model, features, feature_lengths):
  return model.encode_audio(features, feature_lengths)


@functools.partial(nnx.jit, static_argnames='steps')
def greedy(model, embeds, attention_mask, steps):
  """Prefill once, then ``steps`` cached greedy decode steps.

  Returns:
    tokens [B, steps] and the logits each token was chosen from [B, steps, V].
  """
  batch, length = attention_mask.shape
  cache = cache_lib.init_cache(model.config, batch, length + steps, embeds.dtype)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
  prefill = model(
    inputs_embeds=embeds,
    positions=positions,
    attention_mask=attention_mask,
    cache=cache,
    logits_at=jnp.full((batch, 1), length - 1),
  )
  logits, cache = prefill.logits, prefill.cache

  def step(carry, _):
    step_logits, position, cache = carry
    token = jnp.argmax(step_logits, axis=-1)
    out = model(
      token[:, None], positions=position[:, None], attention_mask=jnp.ones((batch, 1), jnp.bool_), cache=cache
    )
    return (out.logits[:, 0], position + 1, out.cache), (token, step_logits)

  start = (logits[:, 0], positions[:, -1] + 1, cache)
  _, (tokens, step_logits) = jax.lax.scan(step, start, length=steps)
  return tokens.T, jnp.swapaxes(step_logits, 0, 1)


def hf_greedy(case):
  """HF's ``generate(do_sample=False)`` of NEW_TOKENS tokens (no stop): tokens, per-step logits."""
  case.hf.generation_config.eos_token_id = None  # else generate merges in the checkpoint's eos
  generation = transformers.GenerationConfig(
    do_sample=False,
    max_new_tokens=NEW_TOKENS,
    pad_token_id=0,
    output_logits=True,
    return_dict_in_generate=True,
  )
  with torch.no_grad():
    out = case.hf.generate(**case.inputs, generation_config=generation)
  assert out.sequences.shape[1] == case.inputs['input_ids'].shape[1] + NEW_TOKENS
  prompt_length = case.inputs['input_ids'].shape[1]
  return (out.sequences[:, prompt_length:].numpy(), torch.stack(out.logits, dim=1).float().numpy())


def exact_bucket(clip: np.ndarray) -> int:
  """The shortest feature bucket (seconds) leaving the padding frames exact encoding needs."""
  needed = exact_frames(int(features_lib.valid_frames(clip.size)))
  return min(s for s in features_lib.BUCKET_SECONDS if 100 * s >= needed)


def hf_inputs(processor, clips, questions=None, padding_side='left'):
  questions = questions or [QUESTION] * len(clips)
  prompts = [chat_prompt(processor, question) for question in questions]
  return processor(
    text=prompts,
    audio=list(clips),
    sampling_rate=SAMPLE_RATE,
    return_tensors='pt',
    padding=True,
    padding_side=padding_side,
  )


def perax_args(inputs, features=None, feature_lengths=None):
  """(input_ids, features, feature_lengths, attention_mask) as jax arrays; HF's 30 s features
  unless bucketed ones are given."""
  if features is None:
    features = inputs['input_features'].numpy()
    feature_lengths = inputs['feature_attention_mask'].numpy().sum(-1)
  return (
    jnp.asarray(inputs['input_ids'].numpy()),
    jnp.asarray(features),
    jnp.asarray(feature_lengths, jnp.int32),
    jnp.asarray(inputs['attention_mask'].numpy().astype(bool)),
  )


class Case:
  """One tiny checkpoint loaded by HF and by perax, and its reference outputs."""

  def __init__(self, name, directory):
    self.name = name
    overrides = dict(CONFIGS[name])
    self.path = tiny.make_tiny_checkpoint(directory, seed=len(name), **overrides)
    self.hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
      self.path, attn_implementation='eager'
    ).eval()
    self.model, self.config, self.processor = loading.load_model(self.path)
    self.clip = synthetic_clip(2.0, seed=3)
    self.inputs = hf_inputs(self.processor, [self.clip])
    with torch.no_grad():
      self.hf_logits = self.hf(**self.inputs).logits.numpy()


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def case(request, tmp_path_factory):
  return Case(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope='module')
def base_case(tmp_path_factory):
  return Case('gqa4_2', tmp_path_factory.mktemp('base'))


def test_prompt_logits_match_hf(case):
  inputs = case.inputs
  audio_tokens = int((inputs['input_ids'] == case.config.audio_token_id).sum())
  assert audio_tokens == ((inputs['feature_attention_mask'].sum() - 1) // 2 + 1 - 2) // 2 + 1
  logits = np.asarray(forward(case.model, *perax_args(inputs)))
  assert logits.shape == case.hf_logits.shape
  np.testing.assert_allclose(logits, case.hf_logits, rtol=0, atol=FP32_TOLERANCE)
  assert (case.model.lm_head is None) == (case.name == 'gqa6_1_tied_odd')


def test_greedy_continuation_matches_hf_generate(case):
  ids, features, lengths, mask = perax_args(case.inputs)
  tokens, step_logits = greedy(
    case.model, prompt_embeds(case.model, ids, features, lengths), mask, steps=NEW_TOKENS
  )
  hf_tokens, hf_step_logits = hf_greedy(case)
  np.testing.assert_array_equal(np.asarray(tokens), hf_tokens)
  np.testing.assert_allclose(np.asarray(step_logits), hf_step_logits, rtol=0, atol=FP32_TOLERANCE)


def test_cache_decoding_equals_full_forward(base_case):
  """The greedy tokens through one full forward pass give the logits the cached steps saw."""
  case = base_case
  ids, features, lengths, mask = perax_args(case.inputs)
  embeds = prompt_embeds(case.model, ids, features, lengths)
  tokens, step_logits = greedy(case.model, embeds, mask, steps=NEW_TOKENS)
  # Generated ids are embedded as text, even a generated <|AUDIO|> id, as in HF's decode steps.
  continued = jnp.concatenate([embeds, case.model.language_model.embed_tokens(tokens[:, :-1])], axis=1)
  full = np.asarray(decoder_logits(case.model, continued, jnp.ones(continued.shape[:2], bool)))
  prompt_length = ids.shape[1]
  np.testing.assert_allclose(
    np.asarray(step_logits), full[:, prompt_length - 1 :], rtol=0, atol=CACHE_TOLERANCE
  )


@pytest.mark.parametrize('padding_side', ['left', 'right'])
def test_padded_bucketed_batch_rows_equal_hf_single_rows(base_case, padding_side):
  case = base_case
  clips = [synthetic_clip(0.83, seed=5), synthetic_clip(2.41, seed=6)]
  questions = [QUESTION, 'How does the speaker feel? Reply with one word.']
  batch = hf_inputs(case.processor, clips, questions, padding_side=padding_side)
  mask = batch['attention_mask'].numpy().astype(bool)
  assert not mask.all()  # the rows differ in length, so one is padded
  features, lengths = features_lib.batch_features(clips)
  assert exact_frames(int(lengths.max())) <= features.shape[-1] < 3000
  logits = np.asarray(forward(case.model, *perax_args(batch, features, lengths)))
  for row, (clip, question) in enumerate(zip(clips, questions)):
    alone = hf_inputs(case.processor, [clip], [question])
    with torch.no_grad():
      expected = case.hf(**alone).logits.numpy()[0]
    np.testing.assert_allclose(logits[row][mask[row]], expected, rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.parametrize('seconds', [1.5, 3.3, 7.9])
def test_bucketed_audio_embeddings_equal_hf_30s_embeddings(base_case, seconds):
  """A clip padded to a 2, 4 or 8 s bucket (200/400/800 frames) gives HF's 30 s embeddings."""
  case = base_case
  clip = synthetic_clip(seconds, seed=int(seconds * 10))
  inputs = hf_inputs(case.processor, [clip])
  captured = []
  hook = case.hf.model.multi_modal_projector.register_forward_hook(
    lambda module, args, output: captured.append(output.detach().numpy())
  )
  try:
    with torch.no_grad():
      case.hf(**inputs)
  finally:
    hook.remove()
  hf_valid = captured[0][0, : int((inputs['input_ids'] == case.config.audio_token_id).sum())]

  bucket_features, bucket_lengths = features_lib.batch_features([clip])
  frames = bucket_features.shape[-1]
  assert frames == 100 * features_lib.bucket_for(clip.size) < 3000
  assert exact_frames(int(bucket_lengths[0])) <= frames
  sliced = inputs['input_features'].numpy()[:, :, :frames]
  for features in (bucket_features, sliced):
    embeds, valid = encode(case.model, jnp.asarray(features), jnp.asarray(bucket_lengths))
    embeds, valid = np.asarray(embeds), np.asarray(valid)
    assert embeds.shape[1] == frames // 4 and valid[0].sum() == hf_valid.shape[0]
    np.testing.assert_allclose(embeds[0][valid[0]], hf_valid, rtol=0, atol=EMBED_TOLERANCE)


def test_real_emodb_clips_match_hf(base_case, emodb_dir):
  case = base_case
  paths = sorted((emodb_dir / 'wav').glob('*.wav'))[:2]
  clips = [audio_lib.load_audio(path) for path in paths]
  for clip in clips:
    inputs = hf_inputs(case.processor, [clip])
    with torch.no_grad():
      expected = case.hf(**inputs).logits.numpy()
    np.testing.assert_allclose(
      np.asarray(forward(case.model, *perax_args(inputs))), expected, rtol=0, atol=FP32_TOLERANCE
    )
    features, lengths = features_lib.batch_features([clip], bucket_seconds=exact_bucket(clip))
    bucketed = np.asarray(forward(case.model, *perax_args(inputs, features, lengths)))
    np.testing.assert_allclose(bucketed, expected, rtol=0, atol=FP32_TOLERANCE)


def test_bfloat16_logits_within_documented_tolerance(base_case):
  case = base_case
  model, _, _ = loading.load_model(case.path, dtype=jnp.bfloat16, with_processor=False)
  assert model.language_model.embed_tokens.embedding[...].dtype == jnp.bfloat16
  logits = np.asarray(forward(model, *perax_args(case.inputs)))
  error = np.abs(logits - case.hf_logits).max()
  assert 0 < error < BF16_LOGIT_TOLERANCE
  agreement = (logits.argmax(-1) == case.hf_logits.argmax(-1)).mean()
  assert agreement > 0.9


def test_fused_attention_matches_einsum(base_case):
  case = base_case
  fused, config, _ = loading.load_model(case.path, attention_impl='xla', with_processor=False)
  assert config.attention_impl == 'xla' and case.config.attention_impl == 'einsum'
  assert fused.language_model.layers.self_attn.attention_impl == 'xla'
  assert fused.audio_tower.layers.self_attn.attention_impl == 'xla'
  clips = [synthetic_clip(0.6, seed=8), synthetic_clip(1.9, seed=9)]
  batch = hf_inputs(case.processor, clips, padding_side='left')
  features, lengths = features_lib.batch_features(clips, bucket_seconds=4)
  args = perax_args(batch, features, lengths)
  mask = np.asarray(args[-1])
  expected = np.asarray(forward(case.model, *args))[mask]
  np.testing.assert_allclose(np.asarray(forward(fused, *args))[mask], expected, rtol=0, atol=1e-5)
  with pytest.raises(InputError, match='attention_impl must be one of'):
    loading.load_model(case.path, attention_impl='flash', with_processor=False)


def test_output_hidden_states_are_hf_final_normed_states(base_case):
  case = base_case
  captured = []
  hook = case.hf.model.language_model.norm.register_forward_hook(
    lambda module, args, output: captured.append(output.detach().numpy())
  )
  try:
    with torch.no_grad():
      case.hf(**case.inputs)
  finally:
    hook.remove()
  ids, features, lengths, _mask = perax_args(case.inputs)
  embeds = prompt_embeds(case.model, ids, features, lengths)
  out = nnx.jit(lambda m, e: m(inputs_embeds=e))(case.model, embeds)
  logits, cache, hidden = out.logits, out.cache, out.hidden_states
  assert cache is None and hidden.shape == (*ids.shape, case.config.text.hidden_size)
  np.testing.assert_allclose(np.asarray(hidden), captured[0], rtol=0, atol=FP32_TOLERANCE)
  np.testing.assert_allclose(np.asarray(logits), case.hf_logits, rtol=0, atol=FP32_TOLERANCE)
