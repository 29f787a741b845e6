"""Tiny random Qwen2-Audio checkpoints load in transformers exactly as real ones do."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
import tokenizers
import torch
import transformers
from safetensors import safe_open

from perax.models import tiny

MESSAGES = [
  {
    'role': 'user',
    'content': [
      {'type': 'audio', 'audio': 'clip.wav'},
      {'type': 'text', 'text': 'What emotion does the speaker express? Answer with the label only.'},
    ],
  }
]
EXPECTED_PROMPT = (
  '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
  '<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n'
  'What emotion does the speaker express? Answer with the label only.<|im_end|>\n'
  '<|im_start|>assistant\n'
)


def read_weights(directory) -> dict[str, np.ndarray]:
  weights = {}
  for path in sorted(pathlib.Path(directory).glob('*.safetensors')):
    with safe_open(str(path), framework='pt') as reader:
      weights.update({name: reader.get_tensor(name).float().numpy() for name in reader.keys()})
  return weights


def hf_audio_tokens(num_samples: int) -> int:
  """Qwen2-Audio's audio-token count: valid frames (every 160th sample), conv stride 2, pooling 2."""
  frames = -(-num_samples // 160)
  after_conv = (frames - 1) // 2 + 1
  return (after_conv - 2) // 2 + 1


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  return tiny.make_tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'ckpt', seed=0)


@pytest.fixture(scope='module')
def processor(checkpoint):
  return transformers.AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope='module')
def hf_model(checkpoint):
  model, info = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
    checkpoint, output_loading_info=True
  )
  return model.eval(), info


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'hidden_size': 48, 'num_attention_heads': 6, 'num_key_value_heads': 3, 'intermediate_size': 80},
    {'hidden_size': 48, 'num_attention_heads': 6, 'num_key_value_heads': 1, 'num_hidden_layers': 3},
    {'tie_word_embeddings': True, 'd_model': 24, 'encoder_attention_heads': 3, 'encoder_layers': 1},
    {'num_key_value_heads': 4, 'vocab_size': 1500, 'encoder_ffn_dim': 40},
  ],
)
def test_parameter_names_and_shapes_match_transformers(overrides):
  tokenizer = tiny.train_tokenizer()
  ids = {token: tokenizer.token_to_id(token) for token in tiny.SPECIAL_TOKENS}
  config = tiny.tiny_config(tokenizer.get_vocab_size(), ids, **overrides)
  model = transformers.Qwen2AudioForConditionalGeneration(transformers.Qwen2AudioConfig(**config))
  expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
  assert tiny.parameter_shapes(config) == expected


def test_processor_loads_and_renders_the_instruct_chat_template(processor):
  assert type(processor).__name__ == 'Qwen2AudioProcessor'
  assert type(processor.feature_extractor).__name__ == 'WhisperFeatureExtractor'
  assert processor.feature_extractor.feature_size == 128
  prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
  assert prompt == EXPECTED_PROMPT
  assert (
    processor.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    == EXPECTED_PROMPT
  )


def test_special_tokens_follow_the_trained_vocabulary_in_qwen_order(checkpoint, processor):
  raw = tokenizers.Tokenizer.from_file(str(pathlib.Path(checkpoint) / 'tokenizer.json'))
  ids = [raw.token_to_id(token) for token in tiny.SPECIAL_TOKENS]
  first = raw.get_vocab_size() - len(tiny.SPECIAL_TOKENS)
  assert ids == list(range(first, first + len(tiny.SPECIAL_TOKENS)))
  config = json.loads((pathlib.Path(checkpoint) / 'config.json').read_text())
  assert config['audio_token_index'] == raw.token_to_id(tiny.AUDIO) == processor.audio_token_id
  assert config['text_config']['vocab_size'] >= raw.get_vocab_size()
  assert processor.tokenizer.convert_tokens_to_ids(list(tiny.SPECIAL_TOKENS)) == ids
  generation = transformers.GenerationConfig.from_pretrained(checkpoint)
  assert generation.eos_token_id == [raw.token_to_id(tiny.IM_END), raw.token_to_id(tiny.ENDOFTEXT)]
  assert generation.pad_token_id == raw.token_to_id(tiny.ENDOFTEXT)


def test_transformers_tokenizer_encodes_like_the_raw_tokenizer(checkpoint, processor):
  raw = tokenizers.Tokenizer.from_file(str(pathlib.Path(checkpoint) / 'tokenizer.json'))
  texts = [
    EXPECTED_PROMPT,
    ' neutral',
    'Angry!',
    'Guten Tag, wie geht es Ihnen? 3.14 ünïcödé 😀',
    'Other: curious.\n\nThe speaker sounds sad.',
  ]
  for text in texts:
    ids = raw.encode(text, add_special_tokens=False).ids
    assert processor.tokenizer.encode(text, add_special_tokens=False) == ids
    assert processor.tokenizer.decode(ids) == text
  assert len(raw.encode(' happy').ids) == 1


@pytest.mark.parametrize('num_samples', [8000, 8037, 16001, 48000, 116959])
def test_processor_expands_the_audio_token(processor, num_samples):
  wave = np.random.default_rng(1).normal(0, 0.1, num_samples).astype(np.float32)
  inputs = processor(text=EXPECTED_PROMPT, audio=[wave], sampling_rate=16000, return_tensors='pt')
  assert int((inputs['input_ids'] == processor.audio_token_id).sum()) == hf_audio_tokens(num_samples)
  assert int(inputs['feature_attention_mask'].sum()) == -(-num_samples // 160)
  assert tuple(inputs['input_features'].shape) == (1, 128, 3000)


def test_transformers_loads_every_weight_and_gives_informative_logits(checkpoint, processor, hf_model):
  model, info = hf_model
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
  stored = read_weights(checkpoint)
  loaded = {name: value.float().numpy() for name, value in model.state_dict().items()}
  assert stored.keys() == loaded.keys()
  for name, value in stored.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  assert model.config.text_config.rope_parameters['rope_theta'] == 10000.0
  wave = np.sin(2 * np.pi * 220 * np.arange(32000) / 16000).astype(np.float32)
  inputs = processor(text=EXPECTED_PROMPT, audio=[wave], sampling_rate=16000, return_tensors='pt')
  with torch.no_grad():
    logits = model(**inputs).logits[0].numpy()
  assert np.isfinite(logits).all()
  last = logits[-1]
  assert 0.3 < last.std() < 5.0
  probs = np.exp(last - last.max())
  probs /= probs.sum()
  assert probs.max() > 5.0 / last.size  # not uniform
  assert np.ptp(logits[:, :32], axis=0).min() > 0.0  # positions differ


def test_sharded_checkpoint_loads_the_same_weights(tmp_path, checkpoint):
  sharded = tiny.make_tiny_checkpoint(tmp_path / 'sharded', seed=0, shards=3)
  index = json.loads((tmp_path / 'sharded' / 'model.safetensors.index.json').read_text())
  files = sorted({*index['weight_map'].values()})
  assert files == [f'model-0000{i}-of-00003.safetensors' for i in (1, 2, 3)]
  assert not (tmp_path / 'sharded' / 'model.safetensors').exists()
  single = read_weights(checkpoint)
  assert set(index['weight_map']) == set(single)
  assert index['metadata']['total_size'] == sum(value.nbytes for value in single.values())
  model, info = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
    sharded, output_loading_info=True
  )
  assert not info['missing_keys'] and not info['unexpected_keys']
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), single[name], err_msg=name)
  resharded = tiny.make_tiny_checkpoint(tmp_path / 'sharded', seed=0)
  assert sorted(p.name for p in pathlib.Path(resharded).glob('model*')) == ['model.safetensors']


def test_tied_embeddings_store_the_head_as_a_copy(tmp_path):
  path = tiny.make_tiny_checkpoint(tmp_path / 'tied', tie_word_embeddings=True)
  model, info = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
    path, output_loading_info=True
  )
  assert not info['missing_keys']
  assert model.config.text_config.tie_word_embeddings
  torch.testing.assert_close(
    model.lm_head.weight, model.model.language_model.embed_tokens.weight, rtol=0, atol=0
  )


def test_bfloat16_weights_are_the_rounded_float32_weights(tmp_path, checkpoint):
  path = tiny.make_tiny_checkpoint(tmp_path / 'bf16', dtype='bfloat16')
  model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype='auto')
  assert model.dtype == torch.bfloat16
  single = read_weights(checkpoint)
  for name, value in read_weights(path).items():
    expected = torch.from_numpy(single[name]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(value, expected, err_msg=name)


def test_same_seed_gives_identical_bytes(tmp_path):
  first = pathlib.Path(tiny.make_tiny_checkpoint(tmp_path / 'a', seed=7))
  second = pathlib.Path(tiny.make_tiny_checkpoint(tmp_path / 'b', seed=7))
  other = pathlib.Path(tiny.make_tiny_checkpoint(tmp_path / 'c', seed=8))

  def digest(directory, name):
    return hashlib.sha256((directory / name).read_bytes()).hexdigest()

  names = sorted(path.name for path in first.iterdir())
  assert names == sorted(path.name for path in second.iterdir())
  assert all(digest(first, name) == digest(second, name) for name in names)
  assert digest(first, 'model.safetensors') != digest(other, 'model.safetensors')
  assert digest(first, 'tokenizer.json') == digest(other, 'tokenizer.json')


def test_bad_overrides_are_rejected(tmp_path):
  with pytest.raises(TypeError, match='hidden_sise'):
    tiny.make_tiny_checkpoint(tmp_path / 'x', hidden_sise=64)
  with pytest.raises(ValueError, match='num_key_value_heads'):
    tiny.make_tiny_checkpoint(tmp_path / 'x', num_key_value_heads=3)
  with pytest.raises(ValueError, match='vocab_size'):
    tiny.make_tiny_checkpoint(tmp_path / 'x', vocab_size=100)
