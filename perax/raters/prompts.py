"""Prompts for synthetic raters: configured templates rendered with the checkpoint's chat template.

A prompt is configuration, not code: ``configs/prompts/default.json`` holds a list of rater
prompts (personas), each with a ``prompt_id`` and a ``template`` with the placeholders ``{labels}``
(the label set, written as ``neutral, happy, sad, angry``) and optionally ``{transcript}``::

  {"default": ["direct"],
   "prompts": [{"prompt_id": "direct",
                "template": "What emotion does the speaker express? ... one of: {labels}. ..."}]}

The conversation is one user turn holding the audio followed by the question, rendered with the
processor's chat template (its default system prompt unless one is given), exactly as for HF::

  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
  Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\n<question><|im_end|>\\n<|im_start|>assistant\\n

HF's processor expands ``<|AUDIO|>`` to one token per valid audio embedding of a clip padded to
30 s; perax encodes clips in shorter buckets, so :class:`PromptEncoder` tokenizes the rendered text
once (with the single ``<|AUDIO|>``) and splices in :func:`num_audio_tokens` copies computed from
perax's own feature lengths with HF's formula. The ids equal
``processor(text=..., audio=...)['input_ids']``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from collections.abc import Sequence

import numpy as np

from perax.configs import config_path
from perax.core.errors import InputError
from perax.models.audio_encoder import audio_token_lengths

DEFAULT_CONFIG = config_path(os.path.join('prompts', 'default.json'))
LABEL_SEPARATOR = ', '
PLACEHOLDERS = ('labels', 'transcript')
AUDIO_TOKEN = '<|AUDIO|>'


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One synthetic rater's instruction.

  Attributes:
    prompt_id: names the rater in the votes table (``rater = '<model>|<prompt_id>'``).
    template: the question, with ``{labels}`` and optionally ``{transcript}``; literal braces are
      written ``{{`` and ``}}``.
  """

  prompt_id: str
  template: str

  def __post_init__(self):
    fields = _fields(self.template, self.prompt_id)
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
      raise InputError(
        f'template has unknown placeholders {unknown}; allowed: {list(PLACEHOLDERS)}', item=self.prompt_id
      )
    if 'labels' not in fields:
      raise InputError('template must write the label set into the prompt with {labels}', item=self.prompt_id)

  @property
  def uses_transcript(self) -> bool:
    return 'transcript' in _fields(self.template, self.prompt_id)

  def question(self, labels: Sequence[str], transcript: str | None = None) -> str:
    """The question text for one utterance.

    Raises:
      InputError: the template needs a transcript and ``transcript`` is None.
    """
    if self.uses_transcript and transcript is None:
      raise InputError('template needs {transcript} but the utterance has none', item=self.prompt_id)
    return self.template.format(labels=LABEL_SEPARATOR.join(labels), transcript=transcript)


def _fields(template: str, prompt_id: str) -> set[str]:
  try:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
  except ValueError as e:
    raise InputError(f'malformed template: {e}', item=prompt_id) from e


def load_prompts(path: str | None = None, prompt_ids: Sequence[str] | None = None) -> list[Prompt]:
  """Reads a prompts config and selects prompts.

  Args:
    path: a JSON file ``{"prompts": [{"prompt_id", "template"}, ...], "default": [ids]}``; the
      repository's configs/prompts/default.json when None.
    prompt_ids: which prompts to use, in order; the config's ``default`` list (or all prompts
      when it has none) when None or empty.

  Returns:
    The selected prompts; prompt ids are unique.

  Raises:
    InputError: malformed config (naming the file and the prompt) or an unknown prompt id.
  """
  path = path or DEFAULT_CONFIG
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except OSError as e:
    raise InputError(f'cannot read prompts config: {e}', path=path) from e
  except json.JSONDecodeError as e:
    raise InputError(f'invalid JSON: {e.msg}', path=path, line=e.lineno) from e
  if not isinstance(config, dict) or not isinstance(config.get('prompts'), list):
    raise InputError('expected an object with a "prompts" list', path=path)
  prompts = {}
  for i, entry in enumerate(config['prompts']):
    if not isinstance(entry, dict) or not {'prompt_id', 'template'} <= set(entry):
      raise InputError('each prompt needs "prompt_id" and "template"', path=path, item=str(i))
    if entry['prompt_id'] in prompts:
      raise InputError('duplicate prompt_id', path=path, item=entry['prompt_id'])
    try:
      prompts[entry['prompt_id']] = Prompt(entry['prompt_id'], entry['template'])
    except InputError as e:
      raise InputError(e.reason, path=path, item=e.item) from e
  selected = list(prompt_ids or config.get('default') or prompts)
  unknown = [p for p in selected if p not in prompts]
  if unknown:
    raise InputError(f'unknown prompt ids {unknown}; the config has {sorted(prompts)}', path=path)
  if len(set(selected)) != len(selected):
    raise InputError(f'prompt ids repeat in {selected}', path=path)
  return [prompts[p] for p in selected]


def conversation(question: str, system_prompt: str | None = None) -> list[dict]:
  """The chat: an optional system turn, then one user turn holding the audio and the question."""
  messages = []
  if system_prompt is not None:
    messages.append({'role': 'system', 'content': system_prompt})
  messages.append(
    {'role': 'user', 'content': [{'type': 'audio', 'audio_url': 'clip'}, {'type': 'text', 'text': question}]}
  )
  return messages


def render_chat(processor, question: str, system_prompt: str | None = None) -> str:
  """The conversation as text through the processor's chat template, ready for the answer.

  The text holds one ``<|AUDIO|>`` placeholder and ends with the assistant turn's opening.
  """
  return processor.apply_chat_template(
    conversation(question, system_prompt), add_generation_prompt=True, tokenize=False
  )


def num_audio_tokens(feature_lengths: np.ndarray) -> np.ndarray:
  """Audio tokens per clip from its valid log-mel frames, as HF's processor counts them.

  Args:
    feature_lengths: [B] valid frames per clip (``feature_attention_mask.sum(-1)``).

  Returns:
    [B] int32, perax.models.audio_encoder.audio_token_lengths (the one home of the count).
  """
  return np.asarray(audio_token_lengths(np.asarray(feature_lengths, np.int64)), np.int32)


class PromptEncoder:
  """Token ids of rendered prompts with the audio placeholder expanded per clip.

  Tokenizes each distinct chat text once (texts repeat across utterances unless the template holds a
  transcript) and splices the audio tokens into the ids, which equals tokenizing the expanded text
  because ``<|AUDIO|>`` is a special token.
  """

  def __init__(self, processor):
    self.tokenizer = processor.tokenizer
    self.audio_token_id = self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    self._ids_by_text: dict[str, np.ndarray] = {}

  def ids(self, chat_text: str, n_audio_tokens: int) -> np.ndarray:
    """[L] int32 ids of ``chat_text`` with its one ``<|AUDIO|>`` expanded to ``n_audio_tokens``.

    Raises:
      InputError: the text does not hold exactly one audio placeholder, or ``n_audio_tokens`` is
        below 1 (a clip too short to give an audio token); the item names the prompt text.
    """
    if int(n_audio_tokens) < 1:
      raise InputError(f'a clip needs at least one audio token, got {n_audio_tokens}', item=_shown(chat_text))
    base = self._ids_by_text.get(chat_text)
    if base is None:
      base = np.asarray(self.tokenizer(chat_text, add_special_tokens=False)['input_ids'], np.int32)
      count = int(np.sum(base == self.audio_token_id))
      if count != 1:
        raise InputError(
          f'a prompt must hold exactly one {AUDIO_TOKEN}, found {count}', item=_shown(chat_text)
        )
      self._ids_by_text[chat_text] = base
    at = int(np.flatnonzero(base == self.audio_token_id)[0])
    audio = np.full(n_audio_tokens, self.audio_token_id, np.int32)
    return np.concatenate([base[:at], audio, base[at + 1 :]])


def _shown(text: str, limit: int = 80) -> str:
  """A prompt text for an error message: one line, at most ``limit`` characters."""
  flat = text.replace('\n', '\\n')
  return flat if len(flat) <= limit else flat[: limit - 3] + '...'
