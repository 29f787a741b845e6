"""PromptIds: one example's prompt token ids (transcript cut to fit, audio tokens spliced) at its bucket's length L_b."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perax.core.errors import InputError
from perax.raters import prompts

# Stands for the transcript while the chat template is rendered once per prompt.
_TRANSCRIPT_SLOT = '\x00transcript\x00'


class PromptIds:
  """Token ids of a prompt for one example, with its transcript and audio tokens, at a fixed length.

  The prompt's question is rendered through the chat template once, with a slot for the transcript;
  per example, the slot is filled and perax.raters.prompts.PromptEncoder (the one splicing home)
  tokenizes the text whole (so ids equal HF's processor's) and expands the one ``<|AUDIO|>`` to the
  clip's audio token count.  A transcript is cut to ``max_transcript_tokens`` tokens so that every
  example of a bucket fits ``length(bucket)``.
  """

  def __init__(
    self,
    processor,
    prompt: prompts.Prompt,
    labels: Sequence[str],
    max_transcript_tokens: int,
    token_multiple: int,
  ):
    tokenizer = processor.tokenizer
    self.encoder = prompts.PromptEncoder(processor)
    # The Rust tokenizer, for transcripts alone: encoding never mutates it, so Grain's threads share it.
    self.tokenizer = tokenizer.backend_tokenizer
    self.audio_token_id = self.encoder.audio_token_id
    self.pad_id = (
      tokenizer.pad_token_id
      if tokenizer.pad_token_id is not None
      else tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    )
    self.uses_transcript = prompt.uses_transcript
    self.chat_text = prompts.render_chat(
      processor, prompt.question(labels, _TRANSCRIPT_SLOT if self.uses_transcript else None)
    )
    self.max_transcript_tokens = max_transcript_tokens if self.uses_transcript else 0
    self.token_multiple = token_multiple
    # The prompt without transcript or audio: one audio token spliced in, then not counted.
    self._base_length = len(self._encode(self.chat_text.replace(_TRANSCRIPT_SLOT, ''), 1)) - 1

  def _encode(self, text: str, num_audio_tokens: int) -> np.ndarray:
    try:
      return self.encoder.ids(text, num_audio_tokens)
    except ValueError as error:
      raise InputError(str(error)) from None

  def length(self, num_frames: int) -> int:
    """L: the token length of every example of a bucket of ``num_frames`` log-mel frames."""
    longest = (
      self._base_length
      + int(prompts.num_audio_tokens(np.asarray([num_frames]))[0])
      + self.max_transcript_tokens
    )
    return -(-longest // self.token_multiple) * self.token_multiple

  def _truncated(self, transcript: str, budget: int) -> str:
    ids = self.tokenizer.encode(transcript, add_special_tokens=False).ids
    return transcript if len(ids) <= budget else self.tokenizer.decode(ids[: max(budget, 0)])

  def ids(self, transcript: str | None, num_audio_tokens: int, max_length: int) -> np.ndarray:
    """[<= max_length] int32 ids of the prompt for one example.

    Args:
      transcript: the example's transcript (used where the prompt holds ``{transcript}``).
      num_audio_tokens: the clip's audio token count, at most that of ``max_length``'s bucket.
      max_length: ``length(frames)`` of the example's bucket.

    Raises:
      InputError: the prompt needs a transcript and the example has none.
    """
    if not self.uses_transcript:
      return self._encode(self.chat_text, num_audio_tokens)
    if transcript is None:
      raise InputError('the prompt needs {transcript} but the example has none')
    budget = self.max_transcript_tokens
    while True:  # Ends: with an empty transcript the ids fit by the definition of length().
      text = self.chat_text.replace(_TRANSCRIPT_SLOT, self._truncated(transcript, budget))
      ids = self._encode(text, num_audio_tokens)
      excess = len(ids) - max_length
      if excess <= 0:
        return ids
      budget = max(budget - excess, 0)
