"""Batch loading in Grain's workers (numpy only): the decoded-waveform cache and plan element -> batch arrays.

The batch arrays and their shapes are listed in :mod:`perax.augment.input_pipeline`'s docstring.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from perax.augment.audio_mix import SAMPLE_RATE, render
from perax.augment.prompt_ids import PromptIds
from perax.data import audio, features
from perax.raters import prompts

Source = tuple[str, float | None, float | None]  # (audio_path, start_s, end_s)


class WaveformCache:
  """Decoded 16 kHz waveforms by source, least recently used first out beyond ``max_bytes``.

  Thread-safe; the waveforms it returns are read-only.  Caching never changes a value, only whether
  a file is decoded again.
  """

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._waveforms: collections.OrderedDict[Source, np.ndarray] = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()

  def get(self, source: Source) -> np.ndarray:
    """The waveform [T] float32 of ``source``, decoded by perax.data.audio.load_audio on a miss."""
    with self._lock:
      waveform = self._waveforms.get(source)
      if waveform is not None:
        self._waveforms.move_to_end(source)
        return waveform
    path, start_s, end_s = source
    waveform = audio.load_audio(path, sr=SAMPLE_RATE, start_s=start_s, end_s=end_s)
    waveform.flags.writeable = False
    if waveform.nbytes <= self.max_bytes:
      with self._lock:
        if source not in self._waveforms:
          self._waveforms[source] = waveform
          self._bytes += waveform.nbytes
        while self._bytes > self.max_bytes:
          self._bytes -= self._waveforms.popitem(last=False)[1].nbytes
    return waveform

  def __getstate__(self):  # Each process starts with an empty cache (locks do not pickle).
    return {'max_bytes': self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state['max_bytes'])


class BatchLoader:
  """Turns a batch plan element into the batch arrays of :mod:`perax.augment.input_pipeline` (numpy only)."""

  def __init__(
    self,
    records: Sequence[dict],
    prompt_ids: PromptIds,
    bucket_seconds: Sequence[int],
    padding_side: str,
    audio_cache_bytes: int,
  ):
    self.records = records
    self.prompt_ids = prompt_ids
    self.bucket_seconds = tuple(bucket_seconds)
    self.padding_side = padding_side
    self.waveforms = WaveformCache(audio_cache_bytes)

  def _example(self, index: int, max_samples: int) -> tuple[np.ndarray, str | None, np.ndarray]:
    record = self.records[index]
    waveform, transcript, target = render(record, lambda u: self.waveforms.get(record['sources'][u]))
    return waveform[:max_samples], transcript, target

  def __call__(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    seconds = self.bucket_seconds[element['bucket']]
    rows = np.asarray(element['rows'], np.int64)
    real = rows >= 0
    if not real.any() and element.get('fill', -1) < 0:
      raise ValueError('a batch needs at least one example')
    examples = {int(r): self._example(int(r), seconds * SAMPLE_RATE) for r in np.unique(rows[real])}
    fill = int(rows[real][0]) if real.any() else int(element['fill'])
    if fill not in examples:
      examples[fill] = self._example(fill, seconds * SAMPLE_RATE)
    waveforms, transcripts, targets = zip(*(examples[int(r) if r >= 0 else fill] for r in rows))
    input_features, feature_lengths = features.batch_features(list(waveforms), bucket_seconds=seconds)
    length = self.prompt_ids.length(input_features.shape[-1])
    n_audio = prompts.num_audio_tokens(feature_lengths)
    input_ids = np.full((len(rows), length), self.prompt_ids.pad_id, np.int32)
    attention_mask = np.zeros((len(rows), length), bool)
    for b, (transcript, count) in enumerate(zip(transcripts, n_audio)):
      ids = self.prompt_ids.ids(transcript, int(count), length)
      span = slice(length - len(ids), length) if self.padding_side == 'left' else slice(0, len(ids))
      input_ids[b, span] = ids
      attention_mask[b, span] = True
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int32)
    return {
      'input_features': input_features,
      'feature_lengths': feature_lengths,
      'input_ids': input_ids,
      'attention_mask': attention_mask,
      'positions': positions,
      'targets': np.stack(targets).astype(np.float32),
      'example_mask': real,
      'example_index': rows.astype(np.int32),
    }
