"""The tokenizer and processor files a checkpoint directory needs, and the ``<|AUDIO|>`` id they give.

The prompts perax builds hold one ``<|AUDIO|>`` token per audio embedding, and the model writes audio
embeddings over the tokens whose id is the config's ``audio_token_index``. When the tokenizer's
``<|AUDIO|>`` id differs from it, no position matches and the audio is silently dropped, so
:func:`check_audio_token` refuses such a directory at conversion and at load.

Reads JSON only (no transformers): ``tokenizer.json`` (``added_tokens``, then ``model.vocab``),
``tokenizer_config.json`` (``added_tokens_decoder``), ``added_tokens.json``, ``vocab.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from perax.core.errors import InputError
from perax.models.config import Qwen2AudioConfig

AUDIO_TOKEN = '<|AUDIO|>'
# Always needed by transformers' Qwen2AudioProcessor: the tokenizer's settings and the feature
# extractor's; plus the vocabulary, as tokenizer.json or as vocab.json with merges.txt.
REQUIRED_FILES = ('tokenizer_config.json', 'preprocessor_config.json')
VOCABULARY_CHOICES = (('tokenizer.json',), ('vocab.json', 'merges.txt'))


def missing_processor_files(directory: os.PathLike | str) -> list[str]:
  """The processor files ``directory`` lacks (empty when it has everything the processor reads)."""
  directory = pathlib.Path(directory)
  missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
  if not any(all((directory / name).is_file() for name in choice) for choice in VOCABULARY_CHOICES):
    missing.append(' or '.join(' + '.join(choice) for choice in VOCABULARY_CHOICES))
  return missing


def check_processor_files(directory: os.PathLike | str) -> None:
  """Raises InputError naming every missing processor file (the checkpoint could not be prompted)."""
  missing = missing_processor_files(directory)
  if missing:
    raise InputError(
      f'missing tokenizer / processor files: {", ".join(missing)}; copy them from the original '
      'Qwen2-Audio checkpoint (perax needs the processor to build prompts)',
      path=directory,
    )


def _read(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise InputError(f'unreadable JSON ({error})', path=path) from None


def token_id(directory: os.PathLike | str, token: str = AUDIO_TOKEN) -> tuple[int, pathlib.Path] | None:
  """(id, file it was read from) of ``token`` in the directory's tokenizer files, or None."""
  directory = pathlib.Path(directory)
  lookups = (
    ('tokenizer.json', lambda d: {t.get('content'): t.get('id') for t in d.get('added_tokens') or []}),
    ('tokenizer.json', lambda d: (d.get('model') or {}).get('vocab') or {}),
    (
      'tokenizer_config.json',
      lambda d: {v.get('content'): int(k) for k, v in (d.get('added_tokens_decoder') or {}).items()},
    ),
    ('added_tokens.json', lambda d: d),
    ('vocab.json', lambda d: d),
  )
  for name, table in lookups:
    path = directory / name
    if not path.is_file():
      continue
    data = _read(path)
    try:
      found = table(data).get(token) if isinstance(data, dict) else None
    except (AttributeError, TypeError, ValueError):
      raise InputError(f'unexpected layout; cannot look up {token!r}', path=path) from None
    if found is not None:
      return int(found), path
  return None


def check_audio_token(directory: os.PathLike | str, config: Qwen2AudioConfig) -> None:
  """Refuses a directory whose tokenizer gives ``<|AUDIO|>`` another id than config.json.

  A directory without tokenizer files passes (nothing to compare); one whose tokenizer lacks the
  token is refused, as its prompts could carry no audio.
  """
  directory = pathlib.Path(directory)
  if not any(
    (directory / name).is_file() for name in ('tokenizer.json', 'tokenizer_config.json', 'vocab.json')
  ):
    return
  found = token_id(directory, AUDIO_TOKEN)
  config_path = directory / 'config.json'
  if found is None:
    raise InputError(
      f'the tokenizer files have no {AUDIO_TOKEN} token; config.json expects it at id {config.audio_token_id}',
      path=directory,
    )
  tokenizer_id, source = found
  if tokenizer_id != config.audio_token_id:
    raise InputError(
      f"audio_token_index {config.audio_token_id} in {config_path} differs from the tokenizer's "
      f'{AUDIO_TOKEN} id {tokenizer_id} in {source}: prompts would carry no audio; make them agree',
      path=config_path,
    )
