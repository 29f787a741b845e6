"""One shard of a proxy job: utterances -> clips -> fixed-size batches -> output rows.

Used by perax.raters.proxies (which owns the job, the shard files and the merge). For each utterance
the audio is loaded and put through the clip policy (perax.data.clips); clips (or their windows) are
grouped by feature bucket into batches of the sampler's size; each batch is encoded once and rated
under every prompt (K votes, or exact label scores); windows are aggregated back into one
utterance's rows: votes pooled (``vote_index = window * K + k``), label distributions and label mass
averaged with the windows' durations as weights. Rows come out in manifest order, then prompt order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from jax.sharding import Mesh

from perax.core.errors import InputError
from perax.core.progress import Progress
from perax.data import audio as audio_io
from perax.data import clips as clips_lib
from perax.data import features as mel
from perax.data import labels as labels_lib
from perax.data import tables
from perax.raters import prompts as prompts_lib
from perax.raters import sampler as sampler_lib

LABEL_MASS = 'label_mass'
CLIP_POLICY = 'clip_policy'
WINDOWS = 'windows'


@dataclasses.dataclass(frozen=True)
class Window:
  """One window of one utterance, as rated (a whole clip is its only window)."""

  row: int  # the utterance's row in the shard
  index: int  # window number within the clip
  waveform: np.ndarray
  key: str  # keys the randomness: the utt_id for window 0


class ShardWorker:
  """Turns one shard of utterances into its output table."""

  def __init__(self, job, model, processor, batch_size: int, mesh: Mesh):
    self.job = job
    self.processor = processor
    self.batch_size = batch_size
    self.sampler = sampler_lib.Sampler(model, processor.tokenizer, batch_size=batch_size, mesh=mesh)
    self.encoder = prompts_lib.PromptEncoder(processor)
    self._chat_texts: dict[str, str] = {}
    self.label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, job.label_set.labels)
    self.config = (
      None
      if job.mode == 'score'
      else self.sampler.config(
        votes_per_clip=job.votes_per_utterance,
        max_new_tokens=job.max_new_tokens,
        temperature=job.temperature,
        top_k=job.top_k,
        top_p=job.top_p,
        constrained=job.constrained,
        stop_strings=job.stop_strings,
        eos_ids=sampler_lib.eos_token_ids(processor.tokenizer),
      )
    )

  def run(self, part: pa.Table, progress: Progress) -> tuple[pa.Table, list[dict]]:
    """The output rows of ``part`` in manifest order, and the utterances skipped (utt_id, reason,
    message) in manifest order."""
    skipped: list[dict] = []
    clips = self._load_clips(part, skipped)
    progress.update(len(skipped))
    utt_ids = tables.column(part, 'utt_id')
    transcripts = tables.column(part, 'transcript')
    windows = [
      Window(row, w, waveform, str(utt_ids[row]) if w == 0 else f'{utt_ids[row]}#window{w}')
      for row, clip in clips.items()
      for w, waveform in enumerate(clip.windows)
    ]
    results: dict[tuple[int, int, int], object] = {}  # (row, prompt number, window) -> payload
    buckets: dict[int, list[Window]] = {}
    for window in windows:
      buckets.setdefault(mel.bucket_for(len(window.waveform)), []).append(window)
    for bucket_seconds, members in sorted(buckets.items()):
      for start in range(0, len(members), self.batch_size):
        batch = members[start : start + self.batch_size]
        padded = sampler_lib.pad_rows(batch, self.batch_size)
        features, lengths = mel.batch_features([w.waveform for w in padded], bucket_seconds)
        encoded = self.sampler.encode(features, lengths)
        for number, prompt in enumerate(self.job.prompts):
          prompt_ids = [
            self._prompt_ids(prompt, utt_ids[w.row], transcripts[w.row], encoded.num_tokens[i])
            for i, w in enumerate(padded)
          ]
          keys = [w.key for w in padded]
          if self.job.mode == 'score':
            out = self._scores(encoded, prompt_ids)
          else:
            out = self._votes(encoded, prompt_ids, keys, prompt)
          for window, payload in zip(batch, out):
            results[window.row, number, window.index] = payload
        progress.update(sum(w.index == len(clips[w.row].windows) - 1 for w in batch))
    rows = []
    for row, clip in sorted(clips.items()):
      for number, prompt in enumerate(self.job.prompts):
        payloads = [results[row, number, w] for w in range(len(clip.windows))]
        rows.extend(self._rows(str(utt_ids[row]), prompt, clip, payloads))
    return self._table(rows), skipped

  def _load_clips(self, part: pa.Table, skipped: list[dict]) -> dict[int, clips_lib.Clip]:
    """Clips by row (16 kHz, the long-clip policy applied); audio that cannot be rated is listed in
    ``skipped`` or raises."""
    clips = {}
    for row, (utt_id, path, start, end) in enumerate(
      zip(*(tables.column(part, name) for name in ('utt_id', 'audio_path', 'start_s', 'end_s')))
    ):
      try:
        if path is None:
          raise InputError('utterance has no audio_path', item=utt_id)
        waveform = audio_io.load_audio(
          path,
          sr=mel.SAMPLE_RATE,
          start_s=None if np.isnan(start) else float(start),
          end_s=None if np.isnan(end) else float(end),
        )
        clips[row] = clips_lib.prepare(waveform, self.job.long_clips, path=path, item=utt_id)
      except InputError as load_error:
        error, reason = load_error, clips_lib.skip_reason(load_error)
        if reason in clips_lib.SKIP_REASONS and not error.reason.startswith(reason):
          error = InputError(f'{reason}: {error.reason}', path=error.path or path, item=utt_id)
        if error.item is None:
          error = InputError(error.reason, path=error.path or path, item=utt_id)
        if not self.job.lenient_audio:
          raise error from load_error
        skipped.append({'utt_id': str(utt_id), 'reason': clips_lib.skip_reason(error), 'message': str(error)})
    return clips

  def _prompt_ids(
    self, prompt: prompts_lib.Prompt, utt_id: str, transcript: str | None, n_audio: int
  ) -> np.ndarray:
    try:
      question = prompt.question(self.job.label_set.labels, transcript)
    except InputError as e:
      raise InputError(e.reason, item=f'{utt_id} (prompt {prompt.prompt_id})') from e
    text = self._chat_texts.get(question)
    if text is None:
      text = prompts_lib.render_chat(self.processor, question, self.job.system_prompt)
      self._chat_texts[question] = text
    return self.encoder.ids(text, int(n_audio))

  def _votes(self, encoded, prompt_ids, keys, prompt) -> list[list[str]]:
    """Each batch row's K decoded answers."""
    tokens = self.sampler.sample(
      encoded,
      prompt_ids,
      self.config,
      seed=self.job.seed,
      utt_ids=keys,
      prompt_id=prompt.prompt_id,
      label_tokens=self.label_tokens,
    )
    return self.sampler.texts(tokens, self.job.stop_strings)

  def _scores(self, encoded, prompt_ids) -> list[tuple[np.ndarray, float]]:
    """Each batch row's (distribution over the label set [C], label mass)."""
    logp = self.sampler.score(encoded, prompt_ids, self.label_tokens)
    probs = sampler_lib.normalise(logp)
    mass = np.exp(logp.astype(np.float64)).sum(axis=-1)
    return list(zip(probs, mass))

  def _rows(self, utt_id: str, prompt, clip: clips_lib.Clip, payloads: list) -> list[dict]:
    """An utterance's output rows under one prompt, its windows aggregated."""
    marks = {CLIP_POLICY: clip.policy, WINDOWS: len(clip.windows)}
    if self.job.mode == 'score':
      probs, mass = clips_lib.aggregate_scores(
        np.stack([p for p, _ in payloads]), np.asarray([m for _, m in payloads]), clip.weights
      )
      columns = tables.label_columns(self.job.label_set.labels)
      return [
        {
          'utt_id': utt_id,
          'prompt_id': prompt.prompt_id,
          **dict(zip(columns, map(float, probs))),
          LABEL_MASS: mass,
        }
        | marks
      ]
    texts = [text for window_texts in payloads for text in window_texts]  # vote_index = w * K + k
    parsed = [labels_lib.parse_label(text) for text in texts]
    valid = self.job.label_set.index(parsed) >= 0
    rater = f'{self.job.model_name}|{prompt.prompt_id}'
    return [
      {
        'utt_id': utt_id,
        'rater': rater,
        'source': tables.SYNTHETIC,
        'label': label,
        'weight': 1.0,
        'text': text,
        'prompt_id': prompt.prompt_id,
        'vote_index': k,
        'valid': bool(ok),
      }
      | marks
      for k, (text, label, ok) in enumerate(zip(texts, parsed, valid))
    ]

  def _table(self, rows: list[dict]) -> pa.Table:
    marks = [(CLIP_POLICY, pa.string()), (WINDOWS, pa.int32())]
    if self.job.mode == 'score':
      schema = pa.schema(
        [('utt_id', pa.string()), ('prompt_id', pa.string())]
        + [(c, pa.float64()) for c in tables.label_columns(self.job.label_set.labels)]
        + [(LABEL_MASS, pa.float64())]
        + marks
      )
      return pa.Table.from_pylist(rows, schema=schema)
    columns = {
      name: [r[name] for r in rows]
      for name in ('utt_id', 'rater', 'source', 'label', 'weight', 'text', 'prompt_id')
    }
    columns['vote_index'] = pa.array([r['vote_index'] for r in rows], pa.int32())
    columns['valid'] = pa.array([r['valid'] for r in rows], pa.bool_())
    for name, kind in marks:
      columns[name] = pa.array([r[name] for r in rows], kind)
    return tables.votes_table(columns)
