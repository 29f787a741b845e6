"""Tiny random Qwen2-Audio checkpoints in Hugging Face format, for tests and the demo pipeline.

:func:`make_tiny_checkpoint` writes a directory that ``transformers.AutoProcessor`` and
``transformers.Qwen2AudioForConditionalGeneration.from_pretrained`` load without remote code, built
from numpy, ``safetensors.numpy`` and ``tokenizers`` (torch is never needed):

- ``config.json``: a ``qwen2_audio`` config with tiny encoder and decoder sizes (overridable);
- ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``:
  random weights under Hugging Face's exact parameter names and shapes (:func:`parameter_shapes`);
- ``tokenizer.json`` + ``tokenizer_config.json``: a byte-level BPE trained deterministically on a
  built-in English text, with Qwen2-Audio's special tokens appended after the trained vocabulary in
  Qwen2-Audio's order, and Qwen2-Audio-Instruct's chat template;
- ``chat_template.jinja``: the same template, where the processor looks for it;
- ``preprocessor_config.json``: the 128-bin Whisper feature extractor, with processor class
  ``Qwen2AudioProcessor``;
- ``generation_config.json``: eos = ``<|im_end|>`` and ``<|endoftext|>``, pad = ``<|endoftext|>``.

Weights are initialised like Hugging Face does (linear, convolution and embedding weights normal with
standard deviation ``initializer_range``, biases zero, layer and RMS norms ones / zeros) from a fixed
numpy seed, except two choices that keep a tiny random model informative:

- ``initializer_range`` defaults to ``1 / sqrt(width)`` (not 0.02), so activations keep unit scale
  and logits have a standard deviation near one: next-token distributions are neither uniform nor
  one-hot, and numerical comparisons between implementations are meaningful;
- the encoder's ``embed_positions`` hold Whisper's sinusoids (perax.models.layers.sinusoids), as the
  real checkpoint's do.

With ``tie_word_embeddings`` the file still holds ``lm_head.weight``, a copy of ``embed_tokens``
(see :func:`parameter_shapes`).

The same ``seed`` and overrides give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import tokenizers
from safetensors import numpy as safetensors_numpy
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from perax.models.layers import sinusoids

# Qwen2-Audio's special tokens, in the order of their ids in the real tokenizer (151643..151648).
ENDOFTEXT = '<|endoftext|>'
IM_START = '<|im_start|>'
IM_END = '<|im_end|>'
AUDIO = '<|AUDIO|>'
AUDIO_BOS = '<|audio_bos|>'
AUDIO_EOS = '<|audio_eos|>'
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS)

# Qwen2-Audio-Instruct's chat template: a default system turn, audio items rendered as
# "Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\n", text items verbatim.
CHAT_TEMPLATE = (
  '{% set audio_count = namespace(value=0) %}'
  '{% for message in messages %}'
  "{% if loop.first and message['role'] != 'system' %}"
  '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
  '{% endif %}'
  "<|im_start|>{{ message['role'] }}\n"
  "{% if message['content'] is string %}"
  "{{ message['content'] }}<|im_end|>\n"
  '{% else %}'
  "{% for content in message['content'] %}"
  "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
  '{% set audio_count.value = audio_count.value + 1 %}'
  'Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n'
  "{% elif 'text' in content %}"
  "{{ content['text'] }}"
  '{% endif %}'
  '{% endfor %}'
  '<|im_end|>\n'
  '{% endif %}'
  '{% endfor %}'
  '{% if add_generation_prompt %}'
  '<|im_start|>assistant\n'
  '{% endif %}'
)

# Qwen2's pre-tokenisation pattern (contractions, letter runs, single digits, punctuation, spaces).
PRETOKENIZE_PATTERN = (
  r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The text the tokenizer is trained on: prompt templates, emotion words, common English.
TRAINING_TEXT = (
  """\
You are a helpful assistant.
What emotion does the speaker express? Choose exactly one of: neutral, happy, sad, angry.
Answer with the label only.
Which emotion best describes the voice in this recording? Reply with one word.
Listen to the audio and classify the emotion of the speaker.
Recognize the emotion with keywords in English.
Choose exactly one of: neutral, happy, sad, angry, fear, disgust, surprise, contempt.
Choose exactly one of: neutral, happy, sad, angry, excited, frustrated, boredom, other.
You are a careful listener who rates emotional speech for a research study.
You are an expert annotator of emotional speech. Be precise and answer briefly.
You are a crowd worker. Answer quickly with your first impression.
The speaker sounds angry. The speaker sounds happy. The speaker sounds sad. The speaker sounds neutral.
The speaker sounds afraid. The speaker sounds disgusted. The speaker sounds surprised.
The speaker sounds bored. The speaker sounds excited. The speaker sounds frustrated.
neutral happy sad angry fear disgust surprise contempt excited frustrated boredom other
Neutral Happy Sad Angry Fear Disgust Surprise Contempt Excited Frustrated Boredom Other
Neutral state. Happiness. Sadness. Anger. Frustration. Excitement. Fearful. Disgusted. Surprised.
Other: curious. Other: confused. Other: amused. Other: annoyed. Other: disappointed.
calm content joyful cheerful glad unhappy depressed furious annoyed irritated scared afraid anxious
nervous worried bored tired amused proud relieved confused curious disappointed jealous hopeful
The audio contains speech. The audio contains music. The audio contains silence and noise.
Audio 1: Audio 2: Audio 3: What is the emotion? What is the mood? How does the speaker feel?
Describe the tone of voice, the pitch, the loudness and the speaking rate.
The voice is loud and fast. The voice is soft and slow. The pitch is high. The pitch is low.
I think the answer is neutral. I think the answer is happy. I am not sure.
Yes. No. Maybe. Okay. Thank you. Please. Sorry. Hello, how are you today?
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.
It was the best of times, it was the worst of times. All that glitters is not gold.
Kids are talking by the door. Dogs are sitting by the door. It's eleven o'clock.
That is exactly what happened. I'm on my way to the meeting. I wonder what this is about.
The airplane is almost full. Maybe tomorrow it will be cold. I would like a new alarm clock.
I think I have a doctor's appointment. Don't forget a jacket. I think I've seen this before.
The surface is slick. We'll stop in a couple of minutes. Where did you put the keys?
She said that he would come back later, but nobody believed her. They were laughing loudly.
He couldn't believe what he heard; his face turned red and he shouted at everyone in the room.
We have been waiting here for hours and nothing has happened yet. This is so unfair!
Oh, that's wonderful news! I'm so glad to hear that. Congratulations to both of you.
I miss her so much. Everything reminds me of the old days. I don't know what to do now.
Leave me alone! Get out of here right now! I told you never to touch my things.
Well, I suppose it doesn't matter. Whatever you decide is fine with me.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 30 42 100 2024 3.14 50% 1/2
Punctuation: , . ; : ! ? ' " ( ) [ ] { } - _ / \\ * + = < > | @ # $ & ~ ^
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June
the of and to in is that for it as with was on be at by this had not are but from or have an they
which one you were her all she there would their we him been has when who will more no if out so
said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under never
day same another know while last might us great old year off come since against go came right used
take three himself few house use during without again place around however home small found thought
went say part once high general upper school every don't does got united left number course war
until always away something fact though water less public put think almost hand enough far took
head yet government system better set told nothing night end why called didn't eyes find going look
asked later knew point next city give group toward young let room side social present given several
order national second possible rather per face among form important often things looking early
white case john become large big need four within felt children along saw best church ever least
power development light thing seemed family interest want members mind country area others done
turned although open god service certain kind problem began different door thus help sense means
whole matter perhaps itself york times law human line above name example action company hands local
show whether five history gave today either act feet across taken past quite anything seen having
death week experience body word half really field am car words already themselves information tell
together college shall money period held keep sure free seems political real behind cannot miss
"""
  * 2
)

TRAINED_VOCAB_SIZE = 1024  # target of BPE training (bytes + merges); the text may stop it short
VOCAB_MULTIPLE = 64  # the config's vocab_size is the tokenizer size rounded up to this multiple

AUDIO_DEFAULTS: Mapping[str, Any] = {
  'model_type': 'qwen2_audio_encoder',
  'd_model': 32,
  'encoder_layers': 2,
  'encoder_attention_heads': 4,
  'encoder_ffn_dim': 64,
  'num_mel_bins': 128,
  'max_source_positions': 1500,
  'activation_function': 'gelu',
  'scale_embedding': False,
  'dropout': 0.0,
  'attention_dropout': 0.0,
  'activation_dropout': 0.0,
  'encoder_layerdrop': 0.0,
}

TEXT_DEFAULTS: Mapping[str, Any] = {
  'model_type': 'qwen2',
  'hidden_size': 32,
  'num_hidden_layers': 2,
  'num_attention_heads': 4,
  'num_key_value_heads': 2,
  'intermediate_size': 64,
  'hidden_act': 'silu',
  'rope_theta': 10000.0,
  'rms_norm_eps': 1e-6,
  'tie_word_embeddings': False,
  'max_position_embeddings': 2048,
  'attention_dropout': 0.0,
  'use_sliding_window': False,
}

WEIGHT_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}


def make_tiny_checkpoint(
  out_dir: os.PathLike | str,
  *,
  seed: int = 0,
  shards: int = 1,
  dtype: str = 'float32',
  **config_overrides: Any,
) -> str:
  """Writes a tiny random Qwen2-Audio checkpoint in Hugging Face format.

  Args:
    out_dir: directory to write (created if needed); stale weight files of an earlier checkpoint
      in it are removed first.
    seed: numpy seed of the weights; the same seed and overrides give byte-identical files.
    shards: number of safetensors files; 1 writes ``model.safetensors``, more write
      ``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json``.
    dtype: 'float32' or 'bfloat16', the stored weight dtype (``torch_dtype`` in config.json).
    **config_overrides: keys of the text config (``hidden_size``, ``num_key_value_heads``,
      ``tie_word_embeddings``, ``vocab_size``, ...) or of the audio encoder config (``d_model``,
      ``encoder_layers``, ...); ``initializer_range`` applies to both. ``text_config=`` and
      ``audio_config=`` dicts are merged into the sub-configs.

  Returns:
    ``out_dir`` as a string.

  Raises:
    TypeError: an override names no known config key.
    ValueError: inconsistent sizes (heads not dividing widths, vocab smaller than the tokenizer).
  """
  if dtype not in WEIGHT_DTYPES:
    raise ValueError(f'dtype must be one of {sorted(WEIGHT_DTYPES)}, got {dtype!r}')
  if shards < 1:
    raise ValueError(f'shards must be >= 1, got {shards}')
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tokenizer = train_tokenizer()
  token_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
  config = tiny_config(tokenizer.get_vocab_size(), token_ids, dtype, **config_overrides)
  weights = random_weights(config, seed, WEIGHT_DTYPES[dtype])
  _write_weights(out, weights, shards)
  _write_json(out / 'config.json', config)
  _write_json(
    out / 'generation_config.json',
    {
      'bos_token_id': token_ids[ENDOFTEXT],
      'eos_token_id': [token_ids[IM_END], token_ids[ENDOFTEXT]],
      'pad_token_id': token_ids[ENDOFTEXT],
    },
  )
  tokenizer.save(str(out / 'tokenizer.json'))
  _write_json(
    out / 'tokenizer_config.json',
    {
      'tokenizer_class': 'Qwen2Tokenizer',
      'bos_token': None,
      'eos_token': IM_END,
      'pad_token': ENDOFTEXT,
      'unk_token': None,
      'extra_special_tokens': list(SPECIAL_TOKENS[1:]),
      'add_prefix_space': False,
      'clean_up_tokenization_spaces': False,
      'errors': 'replace',
      'split_special_tokens': False,
      'model_max_length': config['text_config']['max_position_embeddings'],
      'chat_template': CHAT_TEMPLATE,
    },
  )
  (out / 'chat_template.jinja').write_text(CHAT_TEMPLATE)
  _write_json(
    out / 'preprocessor_config.json',
    {
      'feature_extractor_type': 'WhisperFeatureExtractor',
      'processor_class': 'Qwen2AudioProcessor',
      'feature_size': config['audio_config']['num_mel_bins'],
      'sampling_rate': 16000,
      'hop_length': 160,
      'n_fft': 400,
      'chunk_length': 30,
      'n_samples': 480000,
      'nb_max_frames': 3000,
      'padding_side': 'right',
      'padding_value': 0.0,
      'dither': 0.0,
      'return_attention_mask': True,
    },
  )
  return str(out)


def train_tokenizer() -> tokenizers.Tokenizer:
  """Trains the byte-level BPE tokenizer on :data:`TRAINING_TEXT`; deterministic.

  Returns:
    A Qwen2-style tokenizer (NFC, Qwen2's split pattern, byte-level) whose trained vocabulary is
    followed by :data:`SPECIAL_TOKENS`, in that order.
  """
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
  tokenizer.normalizer = normalizers.NFC()
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_PATTERN), behavior='isolated'),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=TRAINED_VOCAB_SIZE,
    min_frequency=2,
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=[],
  )
  tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(), trainer=trainer)
  tokenizer.add_special_tokens(
    [tokenizers.AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
  )
  return tokenizer


def tiny_config(
  tokenizer_size: int, token_ids: Mapping[str, int], dtype: str = 'float32', **overrides: Any
) -> dict[str, Any]:
  """The config.json dict of a tiny Qwen2-Audio model.

  Args:
    tokenizer_size: number of tokens, special tokens included; vocab_size defaults to it rounded
      up to a multiple of :data:`VOCAB_MULTIPLE`.
    token_ids: id of each of :data:`SPECIAL_TOKENS`.
    dtype: the weights' dtype name, recorded as ``torch_dtype``.
    **overrides: as in :func:`make_tiny_checkpoint`.

  Returns:
    A JSON-serialisable dict with ``audio_config`` and ``text_config``.
  """
  audio = dict(AUDIO_DEFAULTS)
  text = dict(TEXT_DEFAULTS)
  text['vocab_size'] = -(-tokenizer_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  audio.update(overrides.pop('audio_config', {}))
  text.update(overrides.pop('text_config', {}))
  if 'initializer_range' in overrides:
    audio['initializer_range'] = text['initializer_range'] = overrides.pop('initializer_range')
  for key, value in overrides.items():
    if key in TEXT_DEFAULTS or key == 'vocab_size':
      text[key] = value
    elif key in AUDIO_DEFAULTS:
      audio[key] = value
    else:
      raise TypeError(f'unknown tiny checkpoint config key {key!r}')
  audio.setdefault('initializer_range', 1.0 / math.sqrt(audio['d_model']))
  text.setdefault('initializer_range', 1.0 / math.sqrt(text['hidden_size']))
  text['bos_token_id'] = token_ids[ENDOFTEXT]
  text['eos_token_id'] = token_ids[IM_END]
  _check_sizes(audio, text, tokenizer_size)
  return {
    'architectures': ['Qwen2AudioForConditionalGeneration'],
    'model_type': 'qwen2_audio',
    'audio_config': audio,
    'text_config': text,
    'audio_token_index': token_ids[AUDIO],
    'ignore_index': -100,
    'tie_word_embeddings': text['tie_word_embeddings'],
    'torch_dtype': dtype,
  }


def _check_sizes(audio: Mapping[str, Any], text: Mapping[str, Any], tokenizer_size: int) -> None:
  if audio['d_model'] % audio['encoder_attention_heads']:
    raise ValueError(
      f'd_model {audio["d_model"]} is not a multiple of '
      f'encoder_attention_heads {audio["encoder_attention_heads"]}'
    )
  if audio['d_model'] % 2:
    raise ValueError(f'd_model {audio["d_model"]} must be even (sinusoidal positions)')
  if text['hidden_size'] % text['num_attention_heads']:
    raise ValueError(
      f'hidden_size {text["hidden_size"]} is not a multiple of '
      f'num_attention_heads {text["num_attention_heads"]}'
    )
  if text['num_attention_heads'] % text['num_key_value_heads']:
    raise ValueError(
      f'num_attention_heads {text["num_attention_heads"]} is not a multiple of '
      f'num_key_value_heads {text["num_key_value_heads"]}'
    )
  if text['vocab_size'] < tokenizer_size:
    raise ValueError(f'vocab_size {text["vocab_size"]} < tokenizer size {tokenizer_size}')


def parameter_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Hugging Face's parameter names and shapes for a Qwen2-Audio config.json dict.

  Args:
    config: a config.json dict with complete ``audio_config`` and ``text_config``.

  Returns:
    name -> shape, in a fixed order. Linear weights are [out, in], convolutions [out, in, kernel],
    as PyTorch stores them. ``lm_head.weight`` is present even with tied embeddings (it then holds a
    copy of ``embed_tokens``): transformers' Qwen2AudioForConditionalGeneration declares no tied
    weights, so it reports the head missing (and initialises it at random) when it is left out.
  """
  return {name: shape for name, (shape, _) in _parameter_specs(config).items()}


def _parameter_specs(config: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
  """name -> (shape, initialiser), one of normal | zeros | ones | sinusoids | embed_tokens (a copy)."""
  audio, text = config['audio_config'], config['text_config']
  specs = {}

  def linear(name, d_out, d_in, bias=True):
    specs[f'{name}.weight'] = ((d_out, d_in), 'normal')
    if bias:
      specs[f'{name}.bias'] = ((d_out,), 'zeros')

  def norm(name, width, bias):
    specs[f'{name}.weight'] = ((width,), 'ones')
    if bias:
      specs[f'{name}.bias'] = ((width,), 'zeros')

  d_model, mels = audio['d_model'], audio['num_mel_bins']
  tower = 'model.audio_tower'
  specs[f'{tower}.conv1.weight'] = ((d_model, mels, 3), 'normal')
  specs[f'{tower}.conv1.bias'] = ((d_model,), 'zeros')
  specs[f'{tower}.conv2.weight'] = ((d_model, d_model, 3), 'normal')
  specs[f'{tower}.conv2.bias'] = ((d_model,), 'zeros')
  specs[f'{tower}.embed_positions.weight'] = ((audio['max_source_positions'], d_model), 'sinusoids')
  for layer in range(audio['encoder_layers']):
    prefix = f'{tower}.layers.{layer}'
    linear(f'{prefix}.self_attn.k_proj', d_model, d_model, bias=False)
    linear(f'{prefix}.self_attn.v_proj', d_model, d_model)
    linear(f'{prefix}.self_attn.q_proj', d_model, d_model)
    linear(f'{prefix}.self_attn.out_proj', d_model, d_model)
    norm(f'{prefix}.self_attn_layer_norm', d_model, bias=True)
    linear(f'{prefix}.fc1', audio['encoder_ffn_dim'], d_model)
    linear(f'{prefix}.fc2', d_model, audio['encoder_ffn_dim'])
    norm(f'{prefix}.final_layer_norm', d_model, bias=True)
  norm(f'{tower}.layer_norm', d_model, bias=True)

  hidden = text['hidden_size']
  linear('model.multi_modal_projector.linear', hidden, d_model)

  lm = 'model.language_model'
  head_dim = hidden // text['num_attention_heads']
  kv_width = head_dim * text['num_key_value_heads']
  specs[f'{lm}.embed_tokens.weight'] = ((text['vocab_size'], hidden), 'normal')
  for layer in range(text['num_hidden_layers']):
    prefix = f'{lm}.layers.{layer}'
    linear(f'{prefix}.self_attn.q_proj', hidden, hidden)
    linear(f'{prefix}.self_attn.k_proj', kv_width, hidden)
    linear(f'{prefix}.self_attn.v_proj', kv_width, hidden)
    linear(f'{prefix}.self_attn.o_proj', hidden, hidden, bias=False)
    linear(f'{prefix}.mlp.gate_proj', text['intermediate_size'], hidden, bias=False)
    linear(f'{prefix}.mlp.up_proj', text['intermediate_size'], hidden, bias=False)
    linear(f'{prefix}.mlp.down_proj', hidden, text['intermediate_size'], bias=False)
    norm(f'{prefix}.input_layernorm', hidden, bias=False)
    norm(f'{prefix}.post_attention_layernorm', hidden, bias=False)
  norm(f'{lm}.norm', hidden, bias=False)
  head_init = 'embed_tokens' if text['tie_word_embeddings'] else 'normal'
  specs['lm_head.weight'] = ((text['vocab_size'], hidden), head_init)
  return specs


def random_weights(
  config: Mapping[str, Any], seed: int, dtype: np.dtype | type = np.float32
) -> dict[str, np.ndarray]:
  """Random weights for :func:`parameter_shapes`, initialised as the module docstring says.

  Args:
    config: a config.json dict (see :func:`tiny_config`).
    seed: numpy seed; weights are drawn in :func:`parameter_shapes` order.
    dtype: stored dtype (values are drawn in float32, then cast).

  Returns:
    name -> array of that name's shape and ``dtype``.
  """
  rng = np.random.default_rng(seed)
  weights = {}
  for name, (shape, init) in _parameter_specs(config).items():
    sub = config['audio_config'] if name.startswith('model.audio_tower') else config['text_config']
    if init == 'normal':
      value = rng.normal(0.0, sub['initializer_range'], size=shape).astype(np.float32)
    elif init == 'zeros':
      value = np.zeros(shape, np.float32)
    elif init == 'ones':
      value = np.ones(shape, np.float32)
    elif init == 'embed_tokens':
      value = weights['model.language_model.embed_tokens.weight']
    else:
      value = sinusoids(*shape)
    weights[name] = value.astype(dtype)
  return weights


def _write_weights(out: pathlib.Path, weights: Mapping[str, np.ndarray], shards: int) -> None:
  """Writes model.safetensors, or ``shards`` files and their index, as Hugging Face names them."""
  for stale in [*out.glob('model*.safetensors'), out / 'model.safetensors.index.json']:
    stale.unlink(missing_ok=True)
  metadata = {'format': 'pt'}
  if shards == 1:
    safetensors_numpy.save_file(dict(weights), str(out / 'model.safetensors'), metadata=metadata)
    return
  names = list(weights)
  if shards > len(names):
    raise ValueError(f'shards {shards} > number of tensors {len(names)}')
  weight_map = {}
  for index, group in enumerate(np.array_split(np.arange(len(names)), shards)):
    filename = f'model-{index + 1:05d}-of-{shards:05d}.safetensors'
    shard = {names[i]: weights[names[i]] for i in group}
    safetensors_numpy.save_file(shard, str(out / filename), metadata=metadata)
    weight_map.update({name: filename for name in shard})
  total_size = sum(int(value.nbytes) for value in weights.values())
  _write_json(
    out / 'model.safetensors.index.json', {'metadata': {'total_size': total_size}, 'weight_map': weight_map}
  )


def _write_json(path: pathlib.Path, value: Any) -> None:
  path.write_text(json.dumps(value, indent=2, sort_keys=True) + '\n')
