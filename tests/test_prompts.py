"""Prompt configs, and prompts rendered and tokenized exactly as HF's Qwen2-Audio processor does."""

import json

import numpy as np
import pytest
import torch
import transformers

from perax.core.errors import InputError
from perax.data import features
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts

LABELS = ('neutral', 'happy', 'sad', 'angry')
SAMPLE_RATE = 16000


@pytest.fixture(scope='module')
def processor(tmp_path_factory):
  path = make_tiny_checkpoint(tmp_path_factory.mktemp('tiny'))
  return transformers.AutoProcessor.from_pretrained(path)


def _write(tmp_path, config) -> str:
  path = tmp_path / 'prompts.json'
  path.write_text(json.dumps(config))
  return str(path)


def test_default_config_follows_the_field_notes():
  default = prompts.load_prompts()
  assert [p.prompt_id for p in default] == ['direct']
  assert default[0].question(LABELS) == (
    'What emotion does the speaker express? Choose exactly one of: neutral, happy, sad, angry. '
    'Answer with the label only.'
  )
  every = prompts.load_prompts(prompt_ids=['listener', 'direct_transcript'])
  assert [p.uses_transcript for p in every] == [False, True]
  assert '"I am fine."' in every[1].question(LABELS, 'I am fine.')


def test_config_errors_name_file_and_prompt(tmp_path):
  with pytest.raises(InputError, match='unknown placeholders') as info:
    prompts.load_prompts(
      _write(tmp_path, {'prompts': [{'prompt_id': 'p', 'template': 'Pick {labels} for {speaker}'}]})
    )
  assert info.value.path.endswith('prompts.json') and info.value.item == 'p'
  with pytest.raises(InputError, match=r'\{labels\}'):
    prompts.load_prompts(_write(tmp_path, {'prompts': [{'prompt_id': 'p', 'template': 'Pick one'}]}))
  with pytest.raises(InputError, match='duplicate'):
    prompts.load_prompts(_write(tmp_path, {'prompts': [{'prompt_id': 'p', 'template': '{labels}'}] * 2}))
  with pytest.raises(InputError, match='unknown prompt ids'):
    prompts.load_prompts(prompt_ids=['nope'])
  (tmp_path / 'bad.json').write_text('{"prompts": [\n  oops]}')
  with pytest.raises(InputError) as info:
    prompts.load_prompts(str(tmp_path / 'bad.json'))
  assert info.value.line == 2
  with pytest.raises(InputError, match='transcript'):
    prompts.Prompt('t', '{transcript} {labels}').question(LABELS, None)


def test_audio_token_count_matches_hf_formula():
  lengths = np.arange(1, 3001)
  encoder = transformers.models.qwen2_audio.modeling_qwen2_audio.Qwen2AudioEncoder
  _, expected = encoder._get_feat_extract_output_lengths(None, torch.from_numpy(lengths))
  np.testing.assert_array_equal(prompts.num_audio_tokens(lengths), expected.numpy())


@pytest.mark.parametrize(
  'seconds, system_prompt, prompt_id',
  [
    (0.7, None, 'direct'),
    (3.33, 'You rate emotional speech.', 'listener'),
    (5.0, None, 'direct_transcript'),
    (12.01, None, 'annotator'),
  ],
)
def test_prompt_ids_equal_hf_processor(processor, seconds, system_prompt, prompt_id):
  waveform = np.random.default_rng(1).normal(0, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)
  prompt = prompts.load_prompts(prompt_ids=[prompt_id])[0]
  text = prompts.render_chat(processor, prompt.question(LABELS, 'Well, I never.'), system_prompt)
  hf = processor(text=text, audio=[waveform], sampling_rate=SAMPLE_RATE, return_tensors='np')
  # perax encodes the clip in its own bucket; its audio-token count must match HF's 30 s input.
  _, lengths = features.batch_features([waveform])
  np.testing.assert_array_equal(lengths, hf['feature_attention_mask'].sum(-1))
  ids = prompts.PromptEncoder(processor).ids(text, int(prompts.num_audio_tokens(lengths)[0]))
  np.testing.assert_array_equal(ids, hf['input_ids'][0])
  if system_prompt is not None:
    assert f'system\n{system_prompt}<|im_end|>' in text
  assert text.endswith('<|im_start|>assistant\n')


def test_prompt_encoder_needs_one_audio_placeholder(processor):
  with pytest.raises(InputError, match='exactly one'):
    prompts.PromptEncoder(processor).ids('no audio here', 5)
