"""The embedded demo corpus: synthetic speech-like clips whose acoustics follow a known emotion mix.

Nothing is downloaded: :func:`generate` writes, deterministically from a seed, ``n_clips`` short
16 kHz mono wavs and their tables, and :func:`load` reads and validates them.

Each clip i (its own random stream, seeded by (seed, i), so the first k clips do not depend on
``n_clips``):
- a TRUE emotion distribution p over the 'demo' label set (neutral, happy, sad, angry): a Dirichlet
  draw around a dominant emotion (cycling over the labels), mixed with the uniform distribution by a
  random clarity, so clear and ambiguous clips both occur;
- prosody blended from per-emotion profiles (:data:`PROSODY`) with weights p: pitch level and
  contour, pitch movement per syllable, speaking rate, loudness, spectral tilt and breathiness
  (angry: loud, bright; sad: low, slow, quiet, dark, breathy; happy: high, rising, lively; neutral:
  in between). A model can learn the emotion mix from the audio;
- a transcript of words from a small list; its syllable count and the speaking rate set the clip's
  duration (1-3 s);
- audio: a glottal pulse train along the F0 contour, spectral tilt by a repeated one-pole low-pass,
  three formant resonators per syllable (a vowel each), a raised-cosine envelope per syllable,
  aspiration and background noise, scaled to the blended loudness;
- HUMAN_VOTES simulated human votes sampled from p (sparse, as in IEMOCAP), raters drawn from a pool
  of RATER_POOL, and REFERENCE_VOTES dense reference votes (raters dense_00, ...), kept apart.

Speakers (NUM_SPEAKERS, alternating female and male pitch ranges, each with its own pitch and
formant shift) take clips in turn and are split 6/2/2 into train/dev/test
(:func:`perax.data.corpora.splits.speaker_splits`).

Files in ``out_dir``: wav/<utt_id>.wav, utterances.parquet, votes.parquet, reference_votes.parquet
and true_distribution.parquet (utt_id, p_<label>, dominant = argmax of the true p).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.signal
import soundfile

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.audio import SAMPLE_RATE
from perax.data.corpora import base
from perax.data.corpora import splits as splits_lib

NAME = 'demo'
LABEL_SET = 'demo'
NUM_SPEAKERS = 10
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
HUMAN_VOTES = 3
REFERENCE_VOTES = 30
RATER_POOL = 12
CONCENTRATION = 20.0
CLARITY_RANGE = (0.05, 0.95)
SPEECH_SECONDS = (0.8, 2.6)
PAD_SECONDS = 0.1
REFERENCE_RMS = 0.05
BACKGROUND_NOISE = 3e-4

WAV_DIR = 'wav'
UTTERANCES_FILE = 'utterances.parquet'
VOTES_FILE = 'votes.parquet'
REFERENCE_FILE = 'reference_votes.parquet'
TRUE_FILE = 'true_distribution.parquet'

# What a human rater writes for each label (the votes' ``text``), IEMOCAP style.
RATER_TEXT = {'neutral': 'Neutral', 'happy': 'Happiness', 'sad': 'Sadness', 'angry': 'Anger'}

# Words of the transcripts, with their syllable counts.
WORDS = (
  ('the', 1),
  ('meeting', 2),
  ('is', 1),
  ('over', 2),
  ('tomorrow', 3),
  ('we', 1),
  ('went', 1),
  ('home', 1),
  ('again', 2),
  ('really', 2),
  ('today', 2),
  ('window', 2),
  ('yellow', 2),
  ('paper', 2),
  ('after', 2),
  ('dinner', 2),
  ('it', 1),
  ('was', 1),
  ('fine', 1),
  ('sunday', 2),
  ('morning', 2),
  ('never', 2),
  ('seven', 2),
  ('letters', 2),
  ('open', 2),
  ('door', 1),
  ('probably', 3),
  ('everyone', 3),
  ('station', 2),
  ('now', 1),
)

# Vowel formants (F1, F2, F3) in Hz and their bandwidths.
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
FORMANT_BANDWIDTHS = (90.0, 110.0, 150.0)


@dataclasses.dataclass(frozen=True)
class Prosody:
  """The acoustic profile of one emotion; a clip's profile is the p-weighted blend of these.

  Attributes:
    pitch_scale: F0 relative to the speaker's base F0 (blended in the log domain).
    pitch_slope_st: F0 change over the utterance, in semitones (positive: rising).
    pitch_range_st: F0 rise-and-fall within each syllable, in semitones.
    syllable_rate: syllables per second.
    level_db: loudness relative to REFERENCE_RMS.
    tilt_pole: pole of the one-pole low-pass applied twice to the source (higher: darker voice).
    breathiness: aspiration noise relative to the voiced signal.
  """

  pitch_scale: float
  pitch_slope_st: float
  pitch_range_st: float
  syllable_rate: float
  level_db: float
  tilt_pole: float
  breathiness: float


PROSODY = {
  'neutral': Prosody(1.0, -1.0, 1.5, 4.0, 0.0, 0.90, 0.05),
  'happy': Prosody(1.3, 4.0, 4.0, 5.2, 3.0, 0.85, 0.04),
  'sad': Prosody(0.8, -3.0, 0.7, 2.8, -9.0, 0.96, 0.20),
  'angry': Prosody(1.12, -2.0, 3.0, 5.5, 9.0, 0.55, 0.03),
}


@dataclasses.dataclass(frozen=True)
class Speaker:
  """A simulated speaker: base F0 in Hz and a formant scale (vocal tract length)."""

  name: str
  base_f0: float
  formant_scale: float
  split: str


def _speakers(seed: int) -> list[Speaker]:
  """NUM_SPEAKERS speakers, alternating female and male, split speaker-disjoint."""
  names = [f'spk{k:02d}' for k in range(NUM_SPEAKERS)]
  split_of = splits_lib.speaker_splits(names, seed=seed, fractions=SPLIT_FRACTIONS)
  speakers = []
  for k, name in enumerate(names):
    rng = np.random.default_rng([seed, 1, k])
    female = k % 2 == 0
    speakers.append(
      Speaker(
        name,
        (210.0 if female else 120.0) * rng.uniform(0.9, 1.1),
        (1.15 if female else 1.0) * rng.uniform(0.97, 1.03),
        split_of[name],
      )
    )
  return speakers


def _blend(p: np.ndarray, labels: tuple[str, ...]) -> Prosody:
  """The p-weighted prosody (pitch scale blended geometrically)."""
  profiles = [PROSODY[label] for label in labels]
  values = {}
  for field in dataclasses.fields(Prosody):
    column = np.array([getattr(profile, field.name) for profile in profiles])
    values[field.name] = (
      float(np.exp(p @ np.log(column))) if field.name == 'pitch_scale' else float(p @ column)
    )
  return Prosody(**values)


def _true_distribution(rng: np.random.Generator, dominant: int, num_labels: int) -> np.ndarray:
  """A Dirichlet draw around ``dominant`` mixed with uniform by a random clarity; [C], sums to 1."""
  clarity = rng.uniform(*CLARITY_RANGE)
  mean = clarity * np.eye(num_labels)[dominant] + (1.0 - clarity) / num_labels
  p = rng.dirichlet(CONCENTRATION * mean)
  return p / p.sum()


def _transcript(rng: np.random.Generator, rate: float) -> tuple[str, int]:
  """Words whose syllables, spoken at ``rate``, last between SPEECH_SECONDS; (text, syllables)."""
  target = rng.uniform(*SPEECH_SECONDS) * rate
  words, syllables = [], 0
  while syllables < target or not words:
    word, count = WORDS[rng.integers(len(WORDS))]
    if words and (syllables + count) / rate > SPEECH_SECONDS[1]:
      break
    words.append(word)
    syllables += count
  return ' '.join(words), syllables


def _resonator_sos(freqs: np.ndarray, bandwidths: tuple[float, ...]) -> np.ndarray:
  """Second-order sections [K, 6] of unit-peak-gain two-pole resonators at ``freqs`` Hz."""
  sections = []
  for freq, bandwidth in zip(freqs, bandwidths):
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2.0 * np.pi * min(freq, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    sections.append([1.0 - radius, 0.0, 0.0, 1.0, -2.0 * radius * np.cos(theta), radius**2])
  return np.array(sections)


def synthesize(rng: np.random.Generator, prosody: Prosody, speaker: Speaker, syllables: int) -> np.ndarray:
  """One clip: float32 [T] at SAMPLE_RATE, PAD_SECONDS of background noise at both ends.

  Args:
    rng: the clip's random stream (syllable vowels and accents, noise).
    prosody: the clip's blended profile.
    speaker: sets the base F0 and the formant scale.
    syllables: number of syllables, spoken at ``prosody.syllable_rate``.
  """
  syllable_len = int(round(SAMPLE_RATE / prosody.syllable_rate))
  speech_len = syllable_len * syllables
  pad = int(round(PAD_SECONDS * SAMPLE_RATE))
  t = np.arange(speech_len) / speech_len
  within = (np.arange(speech_len) % syllable_len) / syllable_len
  accents = rng.choice([-1.0, 1.0], size=syllables) * rng.uniform(0.5, 1.0, size=syllables)
  semitones = prosody.pitch_slope_st * (t - 0.5) + prosody.pitch_range_st * np.repeat(
    accents, syllable_len
  ) * np.sin(np.pi * within)
  f0 = speaker.base_f0 * prosody.pitch_scale * 2.0 ** (semitones / 12.0)
  f0 *= 1.0 + 0.01 * rng.standard_normal(speech_len)  # jitter
  cycles = np.cumsum(f0) / SAMPLE_RATE
  source = np.diff(np.floor(cycles), prepend=0.0)
  for _ in range(2):
    source = scipy.signal.lfilter([1.0 - prosody.tilt_pole], [1.0, -prosody.tilt_pole], source)
  envelope = np.where(within < 0.8, np.sin(np.pi * np.minimum(within / 0.8, 1.0)) ** 2, 0.0)
  aspiration = scipy.signal.lfilter([1.0, -0.9], [1.0], rng.standard_normal(speech_len))
  voiced = source / (np.std(source) + 1e-12) + prosody.breathiness * aspiration
  speech = np.empty(speech_len)
  vowels = rng.integers(len(VOWELS), size=syllables)
  for k in range(syllables):
    segment = slice(k * syllable_len, (k + 1) * syllable_len)
    sos = _resonator_sos(np.array(VOWELS[vowels[k]]) * speaker.formant_scale, FORMANT_BANDWIDTHS)
    speech[segment] = scipy.signal.sosfilt(sos, voiced[segment])
  speech *= envelope
  target_rms = REFERENCE_RMS * 10.0 ** (prosody.level_db / 20.0)
  speech *= target_rms / (np.sqrt(np.mean(speech**2)) + 1e-12)
  clip = np.concatenate([np.zeros(pad), speech, np.zeros(pad)])
  clip += BACKGROUND_NOISE * rng.standard_normal(clip.size)
  peak = np.max(np.abs(clip))
  return (clip * min(1.0, 0.99 / peak)).astype(np.float32)


def generate(out_dir: os.PathLike | str, seed: int = 0, n_clips: int = 200) -> str:
  """Writes the demo corpus to ``out_dir`` (files in the module docstring) and returns its path.

  Deterministic: the same seed gives byte-identical wavs and tables.
  """
  if n_clips < 1:
    raise ValueError(f'n_clips must be >= 1, got {n_clips}')
  out_dir = os.path.abspath(os.fspath(out_dir))
  os.makedirs(os.path.join(out_dir, WAV_DIR), exist_ok=True)
  labels = labels_lib.get_label_set(LABEL_SET).labels
  speakers = _speakers(seed)
  utterances = collections.defaultdict(list)
  votes, reference = collections.defaultdict(list), collections.defaultdict(list)
  truth = np.empty((n_clips, len(labels)))
  for i in range(n_clips):
    rng = np.random.default_rng([seed, 0, i])
    speaker = speakers[i % NUM_SPEAKERS]
    utt_id = f'demo_{i:04d}'
    truth[i] = _true_distribution(rng, (i // NUM_SPEAKERS) % len(labels), len(labels))
    prosody = _blend(truth[i], labels)
    transcript, syllables = _transcript(rng, prosody.syllable_rate)
    clip = synthesize(rng, prosody, speaker, syllables)
    path = os.path.join(out_dir, WAV_DIR, f'{utt_id}.wav')
    _write_wav(path, clip)
    for name, value in (
      ('utt_id', utt_id),
      ('audio_path', path),
      ('duration_s', clip.size / SAMPLE_RATE),
      ('transcript', transcript),
      ('speaker', speaker.name),
      ('split', speaker.split),
      ('corpus', NAME),
    ):
      utterances[name].append(value)
    raters = [f'rater_{k:02d}' for k in rng.choice(RATER_POOL, size=HUMAN_VOTES, replace=False)]
    _add_votes(votes, utt_id, raters, rng.choice(len(labels), size=HUMAN_VOTES, p=truth[i]), labels)
    _add_votes(
      reference,
      utt_id,
      [f'dense_{k:02d}' for k in range(REFERENCE_VOTES)],
      rng.choice(len(labels), size=REFERENCE_VOTES, p=truth[i]),
      labels,
    )
  tables.write_table(tables.utterances_table(dict(utterances)), os.path.join(out_dir, UTTERANCES_FILE))
  tables.write_table(tables.votes_table(dict(votes)), os.path.join(out_dir, VOTES_FILE))
  tables.write_table(tables.votes_table(dict(reference)), os.path.join(out_dir, REFERENCE_FILE))
  true_table = pa.table(
    {
      'utt_id': utterances['utt_id'],
      **dict(zip(tables.label_columns(labels), truth.T)),
      'dominant': [labels[k] for k in np.argmax(truth, axis=-1)],
    }
  )
  tables.write_table(true_table, os.path.join(out_dir, TRUE_FILE))
  return out_dir


def _write_wav(path: str, clip: np.ndarray) -> None:
  """Writes 16-bit PCM wav bytes in one write (soundfile on a real file syncs to disk on close)."""
  buffer = io.BytesIO()
  soundfile.write(buffer, clip, SAMPLE_RATE, subtype='PCM_16', format='WAV')
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())


def _add_votes(
  columns: collections.defaultdict,
  utt_id: str,
  raters: list[str],
  choices: np.ndarray,
  labels: tuple[str, ...],
) -> None:
  """Appends one human vote per rater (label ``labels[choice]``) to vote columns."""
  for rater, choice in zip(raters, choices):
    for name, value in (
      ('utt_id', utt_id),
      ('rater', rater),
      ('source', tables.HUMAN),
      ('label', labels[choice]),
      ('weight', 1.0),
      ('text', RATER_TEXT[labels[choice]]),
    ):
      columns[name].append(value)


def _check_votes(
  votes: pa.Table,
  path: str,
  known_ids: pa.Array,
  label_set: labels_lib.LabelSet,
  lenient: bool,
  skipped: SkipCounter,
) -> pa.Table:
  """Votes of known utterances with labels in the label set; others raise or are skipped."""
  known = pc.is_in(votes.column('utt_id'), value_set=known_ids).to_numpy(zero_copy_only=False)
  in_set = label_set.index(votes.column('label')) >= 0
  good = known & in_set
  for row in np.flatnonzero(~good):
    utt_id = votes.column('utt_id')[row].as_py()
    reason = (
      'vote for an unknown utterance'
      if not known[row]
      else f'label {votes.column("label")[row].as_py()!r} not in the {LABEL_SET} label set'
    )
    handle(InputError(reason, path=path, item=utt_id), lenient, skipped)
  return votes.filter(pa.array(good))


def load(path: os.PathLike | str, *, lenient: bool = False) -> base.Corpus:
  """Reads a corpus written by :func:`generate` and validates it.

  Checks: every utterance's wav exists and its split is train/dev/test; every vote (and reference
  vote) names a known utterance and a label of the 'demo' set. Strict loading raises InputError
  naming the file and item; lenient loading skips the bad items (an utterance without audio takes
  its votes with it) and counts them in ``Corpus.skipped``.

  Args:
    path: the ``out_dir`` that :func:`generate` wrote.
    lenient: skip bad items instead of raising.
  """
  path = os.fspath(path)
  skipped = SkipCounter()
  label_set = labels_lib.get_label_set(LABEL_SET)
  utterances_path = os.path.join(path, UTTERANCES_FILE)
  utterances = tables.read_utterances(utterances_path)
  good = np.ones(utterances.num_rows, dtype=bool)
  for row, (utt_id, audio_path, split) in enumerate(
    zip(
      tables.column(utterances, 'utt_id'),
      tables.column(utterances, 'audio_path'),
      tables.column(utterances, 'split'),
    )
  ):
    if split not in splits_lib.SPLITS:
      good[row] = False
      handle(
        InputError(f'split {split!r} is not one of {splits_lib.SPLITS}', path=utterances_path, item=utt_id),
        lenient,
        skipped,
      )
    elif audio_path is None or not os.path.isfile(audio_path):
      good[row] = False
      handle(
        InputError(f'audio file {audio_path!r} is missing', path=utterances_path, item=utt_id),
        lenient,
        skipped,
      )
  utterances = utterances.filter(pa.array(good))
  known_ids = utterances.column('utt_id').combine_chunks()
  votes_path, reference_path = os.path.join(path, VOTES_FILE), os.path.join(path, REFERENCE_FILE)
  votes = _check_votes(tables.read_votes(votes_path), votes_path, known_ids, label_set, lenient, skipped)
  reference = _check_votes(
    tables.read_votes(reference_path), reference_path, known_ids, label_set, lenient, skipped
  )
  return base.Corpus(NAME, utterances, votes, skipped, reference)


def true_distribution(path: os.PathLike | str) -> pa.Table:
  """The true distributions a corpus was generated from: utt_id, p_<label>..., dominant."""
  return tables.read_table(os.path.join(os.fspath(path), TRUE_FILE))
