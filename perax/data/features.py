"""Whisper log-mel features exactly as Qwen2-Audio's processor computes them, in numpy.

Qwen2-Audio's processor runs ``WhisperFeatureExtractor(feature_size=128)``: a 16 kHz waveform is
zero-padded (or truncated) to 30 s, framed with a centred 400-sample periodic Hann window every 160
samples (reflect padding at both ends of the padded clip), turned into a power spectrum, projected on
128 Slaney-normalised Slaney-scale mel filters over 0-8 kHz, and compressed as::

    log = log10(max(mel, 1e-10));  log = max(log, max(log) - 8);  features = (log + 4) / 4

with ``max(log)`` over the whole clip (all 3000 frames, the last STFT frame dropped).

Buckets. Padding every clip to 30 s wastes most of the work on speech clips of a few seconds, so
batches are padded to the smallest of :data:`BUCKET_SECONDS` that holds their longest clip, and the
features of a bucket of ``S`` samples are the first ``S // 160`` frames of Hugging Face's. This is
exact, not approximate, because of three facts:

1. Frame ``k`` sees the padded clip's samples [160 k - 200, 160 k + 200). Past the clip, Hugging
   Face's 30 s clip holds zeros, so a bucket's last frames must see zeros there too: the bucket is
   extended on the right with zeros, not reflected (the 30 s bucket reflects, as Hugging Face does).
2. The dynamic-range clamp uses the clip's maximum. A frame made only of padding has mel energy 0,
   hence log10 = log10(1e-10), the smallest value possible, so padding never raises the maximum:
   frames that lie wholly past the clip cannot change it, however many there are.
3. But the two frames after a bucket's last frame still overlap its last 200 samples, so when a
   clip ends there one of them can hold the maximum: a click in the last 80 samples weighs more
   under the next frame's window centre than under any of the bucket's frames. So the maximum is
   taken over the bucket's frames plus these two guard frames, which makes it equal to Hugging
   Face's maximum over all 3000 frames; the guard frames are then dropped.

Facts 1 and 2 also let the numpy path skip work inside a bucket: the frames that lie wholly in the
zero padding past the batch's longest clip are not transformed, only set to the value that every
such frame has (:func:`_log_mel_clips`), so a 2 s clip in the 4 s bucket costs about half.

Valid frames. Hugging Face's ``feature_attention_mask`` marks every 160th sample of the clip, so a
clip of ``n`` samples has ``ceil(n / 160)`` valid frames (at most 3000): :func:`batch_features`
returns exactly that, from which Qwen2-Audio derives its number of audio tokens.

Clips longer than 30 s are truncated to 30 s, as Hugging Face does (the encoder's maximum); each
batch logs how many it truncated. Callers wanting all of a long recording split it into windows of
at most :data:`MAX_SAMPLES` before batching. Waveforms must already be at 16 kHz
(:func:`perax.data.audio.load_audio` resamples).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.sparse

from perax.core import log
from perax.data.audio import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
N_MELS = 128
MAX_SECONDS = 30
MAX_SAMPLES = MAX_SECONDS * SAMPLE_RATE  # 480000, Hugging Face's n_samples
BUCKET_SECONDS = (2, 4, 8, 16, 30)
MEL_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # in log10 units, i.e. 80 dB
GUARD_FRAMES = 2  # frames past a bucket that can still overlap its clip: ceil((N_FFT / 2) / HOP)


def hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
  hz = np.asarray(hz, dtype=np.float64)
  linear = 3.0 * hz / 200.0
  log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(hz >= 1000.0, log_part, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """Inverse of :func:`hz_to_slaney_mel`."""
  mel = np.asarray(mel, dtype=np.float64)
  linear = 200.0 * mel / 3.0
  log_part = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0))
  return np.where(mel >= 15.0, log_part, linear)


@functools.cache
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
  """Triangular Slaney-scale mel filters over 0..sr/2 with Slaney (area) normalisation.

  Args:
    n_mels: number of filters.
    n_fft: FFT size; the filters cover its ``n_fft // 2 + 1`` frequency bins.
    sr: sample rate in Hz.

  Returns:
    float32 [n_fft // 2 + 1, n_mels], read-only (cached).
  """
  bin_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
  edges_hz = slaney_mel_to_hz(np.linspace(hz_to_slaney_mel(0.0), hz_to_slaney_mel(sr / 2), n_mels + 2))
  lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
  rising = (bin_hz[:, None] - lower) / (centre - lower)
  falling = (upper - bin_hz[:, None]) / (upper - centre)
  filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
  filters = filters.astype(np.float32)
  filters.flags.writeable = False
  return filters


@functools.cache
def _block_mel_projection(batch: int) -> scipy.sparse.csr_array:
  """The transposed mel filters once per row of a batch: sparse [batch * 128, batch * 201].

  Applied to power spectra stacked frequency-major, [batch * 201, frames], it gives the mel
  energies [batch * 128, frames] in the features' own layout in one call, with no transposition.
  Sparse (about 2 nonzeros per bin): dense BLAS on this product is slower, and much slower where
  BLAS threads compete for a few busy cores (data-loader workers).
  """
  block = scipy.sparse.kron(
    scipy.sparse.eye_array(batch, dtype=np.float32), scipy.sparse.csr_array(mel_filters().T), format='csr'
  )
  block.sort_indices()
  return block


@functools.cache
def hann_window(n_fft: int = N_FFT) -> np.ndarray:
  """Periodic Hann window, float32 [n_fft] (as torch.hann_window and Hugging Face use)."""
  window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
  window.flags.writeable = False
  return window


def _framing(num_samples: int) -> tuple[int, bool, int]:
  """How a bucket of ``num_samples`` is framed (module docstring, facts 1 and 3).

  Returns:
    right_padding: samples appended on the right before framing;
    reflect: whether they reflect the clip (the 30 s bucket) or are zeros;
    peak_frames: the frames the dynamic-range maximum is taken over (the bucket's frames, plus the
      guard frames for buckets shorter than 30 s).
  """
  num_frames = num_samples // HOP_LENGTH
  if num_samples >= MAX_SAMPLES:
    return N_FFT // 2, True, num_frames
  return N_FFT // 2 + GUARD_FRAMES * HOP_LENGTH, False, num_frames + GUARD_FRAMES


def _check_bucket(num_samples: int) -> None:
  if num_samples % HOP_LENGTH or not N_FFT // 2 < num_samples <= MAX_SAMPLES:
    raise ValueError(
      f'padded length {num_samples} must be a multiple of {HOP_LENGTH} in ({N_FFT // 2}, {MAX_SAMPLES}]'
    )


def _clamp(log_mel, peak, xp, out=None):
  """Whisper's dynamic-range clamp and scaling of log10 mel values against each row's ``peak``.

  With ``out`` (numpy only) the result is written there, by the same float32 operations.
  """
  if out is None:
    return (xp.maximum(log_mel, peak - DYNAMIC_RANGE) + 4.0) / 4.0
  xp.maximum(log_mel, peak - DYNAMIC_RANGE, out=out)
  out += 4.0
  out /= 4.0
  return out


# log10 of the mel energy of a frame of zeros: the floor every pure-padding frame sits at.
_PADDING_LOG_MEL = np.log10(np.maximum(np.zeros((), np.float32), MEL_FLOOR))
# Frames the numpy path transforms at once (_log_mel_clips): its temporaries, about 6 kB a frame,
# then stay within a few MB.
_BLOCK_FRAMES = 1024


def _padded_frames_span(
  clips: Sequence[np.ndarray], num_samples: int, reflect: bool, num_frames: int
) -> np.ndarray:
  """Clips padded as :func:`_framing` pads them, cut after the last of their first frames.

  Args:
    clips: R float32 [T_r] clips, T_r <= num_samples, each standing for itself followed by zeros
      up to ``num_samples`` (its bucket).
    num_samples: the bucket's length S.
    reflect: whether the bucket's right padding reflects the clip (the 30 s bucket) or is zeros.
    num_frames: F >= 2, the frames needed.

  Returns:
    float32 [R, 160 (F - 1) + 400]: the reflection of samples 200..1, the zero-padded clip, then
    (only where the frames reach past S) the right padding, up to the end of frame F - 1.
  """
  left = N_FFT // 2
  padded = np.zeros((len(clips), HOP_LENGTH * (num_frames - 1) + N_FFT), np.float32)
  span = min(padded.shape[1] - left, num_samples)
  for row, clip in enumerate(clips):
    padded[row, left : left + min(len(clip), span)] = clip[:span]
  padded[:, :left] = padded[:, 2 * left : left : -1]  # sample k - 200 < 0 reflects to 200 - k
  right = padded.shape[1] - left - num_samples
  if reflect and right > 0:  # sample S + j reflects to S - 2 - j
    end = left + num_samples
    padded[:, end:] = padded[:, end - 2 : end - 2 - right : -1]
  return padded


def _log10_mel(padded: np.ndarray, num_frames: int) -> np.ndarray:
  """Floored log10 mel energies of the first frames of padded clips, in numpy.

  Frames are laid out frequency-major ([R, 400, F], then [R, 201, F] spectra) so that the mel
  projection writes the features' own layout, with no transposition.

  Args:
    padded: float32 [R, T], clips already padded on both sides; T >= 160 (num_frames - 1) + 400.
    num_frames: F, frames starting every 160 samples from sample 0.

  Returns:
    float32 [R, 128, F]: log10(max(mel energy, 1e-10)).
  """
  rows = padded.shape[0]
  frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=1)
  frames = frames[:, : HOP_LENGTH * (num_frames - 1) + 1 : HOP_LENGTH]  # [R, F, 400], a view
  windowed = frames.transpose(0, 2, 1) * hann_window()[:, None]  # [R, 400, F]
  spectrum = scipy.fft.rfft(windowed, axis=1)  # [R, 201, F]
  power = spectrum.real**2 + spectrum.imag**2
  log_mel = _block_mel_projection(rows) @ power.reshape(rows * power.shape[1], num_frames)
  np.log10(np.maximum(log_mel, MEL_FLOOR, out=log_mel), out=log_mel)
  return log_mel.reshape(rows, N_MELS, num_frames)


def _log_mel_clips(clips: Sequence[np.ndarray], num_samples: int) -> np.ndarray:
  """Features of clips zero-padded to a bucket, transforming only the frames that can hold signal.

  Frame k sees samples [160 k - 200, 160 k + 200), so past the longest clip (``extent`` samples)
  every frame from ceil((extent + 200) / 160) on sees zeros only: zero padding, or for the 30 s
  bucket the reflection of zeros (its reflected samples are clip samples only when
  ``extent > S - 200``, and then every frame is computed). The log mel of such a frame is the floor
  log10(1e-10), so its features are set directly to their clamped value
  ``(max(floor, peak - 8) + 4) / 4`` by the same float32 operations as a computed frame: the
  result is identical to transforming every frame (the floor never raises a peak, fact 2).

  The frames are transformed in blocks of about :data:`_BLOCK_FRAMES` (whole rows where they fit):
  a block's temporaries stay in cache, and the allocator reuses their memory from block to block
  instead of mapping fresh pages for every batch-sized temporary, which costs more than the FFTs.

  Args:
    clips: B float32 [T_b] clips, T_b <= num_samples.
    num_samples: S, the bucket (checked by :func:`_check_bucket`).

  Returns:
    float32 [B, 128, S // 160], as :func:`log_mel_batch` of the zero-padded clips.
  """
  _check_bucket(num_samples)
  _, reflect, peak_frames = _framing(num_samples)
  num_frames = num_samples // HOP_LENGTH
  extent = max((len(clip) for clip in clips), default=0)
  computed = min(-(-(extent + N_FFT // 2) // HOP_LENGTH), peak_frames)  # >= 2
  kept = min(computed, num_frames)  # computed frames past the bucket are guards: they feed peak
  features = np.empty((len(clips), N_MELS, num_frames), np.float32)
  rows_per_block = max(1, _BLOCK_FRAMES // computed)
  frames_per_block = min(computed, _BLOCK_FRAMES)
  for first_row in range(0, len(clips), rows_per_block):
    block = clips[first_row : first_row + rows_per_block]
    rows = slice(first_row, first_row + len(block))
    padded = _padded_frames_span(block, num_samples, reflect, computed)
    log_mels = []  # (first frame, [R, 128, frames] log mel) of each block of frames
    for first in range(0, computed, frames_per_block):
      count = min(frames_per_block, computed - first)
      span = padded[:, HOP_LENGTH * first : HOP_LENGTH * (first + count - 1) + N_FFT]
      log_mels.append((first, _log10_mel(span, count)))
    peak = np.full((len(block), 1, 1), _PADDING_LOG_MEL)  # [R, 1, 1]
    for _, log_mel in log_mels:
      np.maximum(peak, log_mel.max(axis=(1, 2), keepdims=True), out=peak)
    for first, log_mel in log_mels:
      stored = max(min(log_mel.shape[2], kept - first), 0)
      _clamp(log_mel[:, :, :stored], peak, np, out=features[rows, :, first : first + stored])
    features[rows, :, kept:] = _clamp(_PADDING_LOG_MEL, peak, np)
  return features


def log_mel_batch(waveforms: np.ndarray) -> np.ndarray:
  """Log-mel features of zero-padded 16 kHz clips, in numpy (float32).

  Frames that see no nonzero sample of the batch are not transformed, only set to their exact
  value (:func:`_log_mel_clips`).

  Args:
    waveforms: float [B, S], each row a clip followed by zeros; S a multiple of 160, at most
      480000 (a bucket).

  Returns:
    float32 [B, 128, S // 160]: row b equals Hugging Face's features of ``waveforms[b]`` on their
    first S // 160 frames (see the module docstring).
  """
  waveforms = np.asarray(waveforms, dtype=np.float32)
  nonzero = np.flatnonzero(waveforms.any(axis=0))
  extent = int(nonzero[-1]) + 1 if nonzero.size else 0
  return _log_mel_clips(list(waveforms[:, :extent]), waveforms.shape[1])


def log_mel_spectrogram(audio: np.ndarray, n_frames: int | None = None) -> np.ndarray:
  """Log-mel features of one 16 kHz clip, zero-padded or truncated to ``n_frames`` frames.

  Args:
    audio: float [T] at 16 kHz.
    n_frames: number of frames (100 per second); None gives Hugging Face's 3000 (30 s).

  Returns:
    float32 [128, n_frames]: Hugging Face's features of ``audio[:160 * n_frames]``, first
    ``n_frames`` frames.
  """
  num_samples = HOP_LENGTH * (MAX_SAMPLES // HOP_LENGTH if n_frames is None else n_frames)
  return _log_mel_clips([np.asarray(audio, dtype=np.float32)[:num_samples]], num_samples)[0]


def bucket_for(num_samples: int, bucket_seconds: Sequence[int] = BUCKET_SECONDS) -> int:
  """The smallest of ``bucket_seconds`` (ascending) whose frames encode a clip exactly as 30 s
  padding does; the one home of the bucket rule (the Grain pipeline's buckets use it too).

  The audio encoder's convolutions read one or two feature frames past the clip's valid frames
  (:func:`encoder_frames_needed`), and with 30 s padding those frames hold padding features, not the
  convolution's zero padding. So a bucket must hold them too: a 2.00 s clip goes to the 4 s bucket.
  Clips needing more than the last bucket get the last (and are truncated there).
  """
  needed = int(encoder_frames_needed(int(valid_frames(num_samples))))
  for seconds in bucket_seconds:
    if needed <= seconds * FRAMES_PER_SECOND:
      return seconds
  return bucket_seconds[-1]


def encoder_frames_needed(
  feature_length: np.ndarray | int, max_frames: int = MAX_SECONDS * FRAMES_PER_SECOND
) -> np.ndarray | int:
  """The fewest padded feature frames for which the encoder sees what 30 s padding shows it.

  ``L + 1`` for even ``L`` (the valid conv frames read feature frame ``L``), ``L + 2`` for odd ``L``
  (they read frame ``L + 1``), at most ``max_frames``.
  """
  return np.minimum(feature_length + 1 + feature_length % 2, max_frames)


def valid_frames(num_samples: np.ndarray | int) -> np.ndarray:
  """Hugging Face's ``feature_attention_mask.sum(-1)``: ceil(n / 160), at most 3000. int32."""
  clipped = np.minimum(np.asarray(num_samples, dtype=np.int64), MAX_SAMPLES)
  return (-(-clipped // HOP_LENGTH)).astype(np.int32)


def batch_features(
  waveforms: Sequence[np.ndarray], bucket_seconds: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Pads a batch of 16 kHz clips to one bucket and computes their log-mel features.

  Args:
    waveforms: B float [T_b] clips at 16 kHz.
    bucket_seconds: padded duration; None picks :func:`bucket_for` of the longest clip. Clips
      longer than the bucket (or than 30 s) are truncated, and the count is logged.

  Returns:
    features: float32 [B, 128, 100 * bucket], Hugging Face's features on these frames.
    feature_lengths: int32 [B], the valid frames of each (truncated) clip, :func:`valid_frames`.
  """
  lengths = np.array([len(waveform) for waveform in waveforms], dtype=np.int64)
  if not lengths.size:
    raise ValueError('batch_features needs at least one waveform')
  seconds = bucket_for(int(lengths.max())) if bucket_seconds is None else bucket_seconds
  num_samples = seconds * SAMPLE_RATE
  truncated = int((lengths > num_samples).sum())
  if truncated:
    log.warning(
      f'truncated {truncated} of {lengths.size} clips to the {seconds} s bucket '
      f'(longest {lengths.max() / SAMPLE_RATE:.1f} s)'
    )
  clips = [np.asarray(waveform, dtype=np.float32)[:num_samples] for waveform in waveforms]
  return _log_mel_clips(clips, num_samples), valid_frames(np.minimum(lengths, num_samples))
