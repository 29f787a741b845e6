"""Small IEMOCAP and MSP-Podcast releases in their real on-disk layouts, with real speech audio.

  build = write_iemocap(tmp_path / 'IEMOCAP_full_release')
  build = write_msp_podcast(tmp_path / 'MSP-Podcast', detailed_format='v1.6', consensus_name=CONCENSUS)

Audio is cut from the EmoDB recordings under ../shared/data/emodb/wav (2.000 s each at 22.05 kHz),
resampled to 16 kHz as both corpora ship it; where ../shared is absent (or ``PERAX_SHARED_DATA`` points
elsewhere) it is synthesised (voiced harmonics with noise), so the builders never need the shared data.

Every file is written deterministically from ``seed``. The builders return what they wrote (paths and
the per-utterance plan) for convenience; tests that check loader counts should parse the written files
with their own reader instead of trusting the plan.

IEMOCAP (Session1..Session5, two dialogs per session, six turns per dialog, turn ids numbered per
speaker: F000, M000, F001, M001, F002, M002):
- dialog/EmoEvaluation/<dialog>.txt in Latin-1: a ``%`` header line, blank lines between blocks, each
  block ``[start - end] TAB turn TAB code TAB [V, A, D]`` then C-E* lines (several labels on some lines,
  "Neutral state", "Other:<text>"), the speaking actor's self-evaluation C-F1 / C-M1 on most turns, and
  A- lines with comments (some with Latin-1 characters);
- every consensus code appears: neu hap exc sad ang fru sur fea dis oth xxx;
- one 4-class turn (a 'sad' consensus) has only out-of-set external votes and an in-set self-evaluation
  (:data:`NO_IN_SET_TURN`);
- dialog/transcriptions/<dialog>.txt (Latin-1, one line for a turn nobody evaluated) and
  sentences/wav/<dialog>/<turn>.wav at 16 kHz with the header's duration.

MSP-Podcast (Labels/, Audios/, Transcripts/):
- labels_consensus.csv (or the old spelling labels_concensus.csv) with every EmoClass N H S A C U D F O
  X, splits Train, Development, Test1, Test2 and (``test3``) Test3, numeric speakers that never cross
  splits and 'Unknown' speakers in every split;
- labels_detailed.csv in the v1.11+ format (FileName, EmoDetail) or the v1.6 one (FileName, Workers,
  EmoClass_Major, EmoClass_Second, EmoAct, EmoVal, EmoDom), with "Other-..." primaries, a misspelling
  ("Dissapointed") and a free-text primary containing ';'; one file has no rating at all
  (:data:`UNRATED_FILE`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
REPO = pathlib.Path(__file__).resolve().parents[1]
CONSENSUS = 'labels_consensus.csv'
CONCENSUS = 'labels_concensus.csv'

# ----------------------------------------------------------------------------------------------
# Audio.


def _shared_emodb_wavs() -> list[pathlib.Path]:
  root = pathlib.Path(os.environ.get('PERAX_SHARED_DATA', REPO.parent / 'shared' / 'data'))
  return sorted((root / 'emodb' / 'wav').glob('*.wav'))


@functools.lru_cache(maxsize=1)
def _speech_pool() -> tuple[np.ndarray, ...]:
  """Real speech at 16 kHz (up to 24 EmoDB files), or an empty tuple where none is available."""
  pool = []
  for path in _shared_emodb_wavs()[:24]:
    audio, rate = sf.read(path, dtype='float32', always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:  # linear interpolation: enough for test audio, no scipy import
      times = np.arange(int(len(audio) * SAMPLE_RATE / rate)) / SAMPLE_RATE
      audio = np.interp(times, np.arange(len(audio)) / rate, audio).astype(np.float32)
    pool.append(audio)
  return tuple(pool)


def real_audio_available() -> bool:
  return bool(_speech_pool())


def speech(seconds: float, index: int) -> np.ndarray:
  """``seconds`` of 16 kHz mono float32 audio: real speech cut (and repeated) from EmoDB file
  ``index`` of the pool where available, else a synthetic voiced signal seeded by ``index``."""
  n = max(int(round(seconds * SAMPLE_RATE)), 1)
  pool = _speech_pool()
  if pool:
    source = pool[index % len(pool)]
    reps = -(-n // len(source))
    return np.tile(source, reps)[:n].astype(np.float32)
  rng = np.random.default_rng(index)
  t = np.arange(n) / SAMPLE_RATE
  f0 = 110 + 90 * rng.random()
  voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.random()) / k for k in range(1, 6))
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
  return (0.2 * voiced * envelope + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _write_wav(path: pathlib.Path, seconds: float, index: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, speech(seconds, index), SAMPLE_RATE, subtype='PCM_16')


# ----------------------------------------------------------------------------------------------
# IEMOCAP.

IEMOCAP_CODES = ('neu', 'hap', 'exc', 'sad', 'ang', 'fru', 'sur', 'fea', 'dis', 'oth', 'xxx')
IEMOCAP_WORDS = {
  'neu': 'Neutral',
  'hap': 'Happiness',
  'exc': 'Excited',
  'sad': 'Sadness',
  'ang': 'Anger',
  'fru': 'Frustration',
  'sur': 'Surprise',
  'fea': 'Fear',
  'dis': 'Disgust',
  'oth': 'Other',
}
# Consensus codes of the 60 turns, in file order: each code at least once, the 4-class codes most.
_IEMOCAP_PLAN = tuple(
  code
  for dialog in (
    ('neu', 'hap', 'fru', 'xxx', 'exc', 'sad'),
    ('ang', 'neu', 'xxx', 'sur', 'fru', 'ang'),
    ('sad', 'exc', 'neu', 'xxx', 'hap', 'fea'),
    ('xxx', 'fru', 'ang', 'neu', 'dis', 'sad'),
    ('exc', 'xxx', 'sad', 'fru', 'oth', 'hap'),
    ('ang', 'neu', 'xxx', 'neu', 'exc', 'fru'),
    ('neu', 'ang', 'sad', 'xxx', 'fru', 'exc'),
    ('hap', 'neu', 'xxx', 'ang', 'sad', 'fru'),
    ('xxx', 'neu', 'exc', 'sad', 'ang', 'oth'),
    ('fru', 'ang', 'neu', 'xxx', 'hap', 'sad'),
  )
  for code in dialog
)
NO_IN_SET_TURN = 'Ses03F_impro01_F001'
_SPEAKERS = ('F', 'M', 'F', 'M', 'F', 'M')
_LATIN1_COMMENTS = ('déjà vu', 'naïve tone', 'très calme', '')
_TEXTS = ('Excuse me.', 'Do you have your forms?', 'Yeah.', 'Café?', "I don't know.", 'Fine, whatever.')


@dataclasses.dataclass
class IemocapBuild:
  root: pathlib.Path
  turns: list[dict]  # per turn: utt_id, session, dialog, code, start_s, end_s, lines (C-/A- text lines)


def _iemocap_dialogs(session: int) -> tuple[str, ...]:
  gender = 'F' if session % 2 else 'M'
  impro = 'impro05a' if session == 2 else 'impro01'
  return (f'Ses0{session}{gender}_{impro}', f'Ses0{session}{gender}_script01_1')


def _evaluator_lines(code: str, turn: str, speaker: str, rng: np.random.Generator) -> list[str]:
  """The C- and A- lines of one block (see the module docstring for what they cover)."""
  evaluators = sorted(
    rng.choice(['E1', 'E2', 'E3', 'E4', 'E5', 'E6'], size=3 + int(rng.random() < 0.3), replace=False)
  )
  words = list(IEMOCAP_WORDS.values())
  lines = []
  for k, evaluator in enumerate(evaluators):
    if turn == NO_IN_SET_TURN:
      labels = ['Frustration'] if k else ['Other:tired']
    elif code == 'xxx':
      labels = [words[int(rng.integers(len(words)))]]
    elif k < 2 or rng.random() < 0.5:
      labels = [IEMOCAP_WORDS[code]]
    else:
      labels = [words[int(rng.integers(len(words)))]]
    if rng.random() < 0.2:  # a second label on the line
      extra = words[int(rng.integers(len(words)))]
      labels = labels + [extra] if extra not in labels else labels
    labels = ['Neutral state' if t == 'Neutral' and rng.random() < 0.3 else t for t in labels]
    labels = ['Other:curious' if t == 'Other' else t for t in labels]
    comment = _LATIN1_COMMENTS[int(rng.integers(len(_LATIN1_COMMENTS)))]
    lines.append(f'C-{evaluator}:\t{"; ".join(labels)};\t({comment})')
  if turn == NO_IN_SET_TURN or rng.random() < 0.7:
    self_label = 'Sadness' if turn == NO_IN_SET_TURN else IEMOCAP_WORDS.get(code, 'Neutral')
    lines.append(f'C-{speaker}1:\t{self_label};\t()')
  for evaluator in evaluators[:2]:
    v, a, d = rng.integers(1, 6, size=3)
    lines.append(f'A-{evaluator}:\tval {v}; act {a}; dom  {d};\t({_LATIN1_COMMENTS[int(rng.integers(4))]})')
  return lines


def write_iemocap(root: os.PathLike | str, *, seed: int = 0, audio: bool = True) -> IemocapBuild:
  """Writes the five-session release described in the module docstring under ``root``."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  turns, plan = [], iter(_IEMOCAP_PLAN)
  for session in range(1, 6):
    session_dir = root / f'Session{session}'
    for dialog in _iemocap_dialogs(session):
      blocks, transcript_lines, counters, start = [], [], {'F': 0, 'M': 0}, 1.5
      for speaker in _SPEAKERS:
        code = next(plan)
        turn = f'{dialog}_{speaker}{counters[speaker]:03d}'
        counters[speaker] += 1
        duration = round(0.8 + 1.1 * float(rng.random()), 4)
        end = round(start + duration, 4)
        lines = _evaluator_lines(code, turn, speaker, rng)
        vad = ', '.join(f'{x:.4f}' for x in rng.integers(2, 10, size=3) / 2)
        blocks.append('\n'.join([f'[{start:.4f} - {end:.4f}]\t{turn}\t{code}\t[{vad}]', *lines]))
        text = _TEXTS[int(rng.integers(len(_TEXTS)))]
        transcript_lines.append(f'{turn} [{start:08.4f}-{end:08.4f}]: {text}')
        if audio:
          _write_wav(session_dir / 'sentences' / 'wav' / dialog / f'{turn}.wav', end - start, len(turns))
        turns.append(
          dict(utt_id=turn, session=session, dialog=dialog, code=code, start_s=start, end_s=end, lines=lines)
        )
        start = round(end + 0.7, 4)
      transcript_lines.append(f'{dialog}_MXX0 [{start:08.4f}-{start + 1:08.4f}]: Not evaluated.')
      evaluation = session_dir / 'dialog' / 'EmoEvaluation' / f'{dialog}.txt'
      evaluation.parent.mkdir(parents=True, exist_ok=True)
      evaluation.write_text(
        '% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n' + '\n\n'.join(blocks) + '\n',
        encoding='latin-1',
      )
      transcripts = session_dir / 'dialog' / 'transcriptions' / f'{dialog}.txt'
      transcripts.parent.mkdir(parents=True, exist_ok=True)
      transcripts.write_text('\n'.join(transcript_lines) + '\n', encoding='latin-1')
  return IemocapBuild(root, turns)


# ----------------------------------------------------------------------------------------------
# MSP-Podcast.

MSP_CODES = ('N', 'H', 'S', 'A', 'C', 'U', 'D', 'F', 'O', 'X')
MSP_WORDS = {
  'N': 'Neutral',
  'H': 'Happy',
  'S': 'Sad',
  'A': 'Angry',
  'C': 'Contempt',
  'U': 'Surprise',
  'D': 'Disgust',
  'F': 'Fear',
  'O': 'Other-Concerned',
}
_MSP_ODD_PRIMARIES = ('Other- upset; tense', 'Dissapointed', 'Other-Confused', 'Angry and sad')
UNRATED_FILE = 'MSP-PODCAST_0104_0002.wav'


@dataclasses.dataclass
class MspBuild:
  root: pathlib.Path
  files: list[dict]  # per file: FileName, EmoClass, SpkrID, Split_Set, ratings [(worker, primary, secondary)]


def _msp_plan(test3: bool) -> list[tuple[str, str, str]]:
  """(file name, split, speaker) of each file: speakers never cross splits, except 'Unknown'."""
  splits = ['Train', 'Train', 'Development', 'Test1', 'Test2'] + (['Test3'] if test3 else [])
  plan = []
  for podcast, split in enumerate(splits, start=101):
    speakers = [str(podcast * 10 + k) for k in range(2)] + ['Unknown']
    for segment in range(1, 9):
      plan.append((f'MSP-PODCAST_{podcast:04d}_{segment:04d}.wav', split, speakers[segment % 3]))
  return plan


def write_msp_podcast(
  root: os.PathLike | str,
  *,
  seed: int = 0,
  detailed_format: str = 'v1.11',
  consensus_name: str = CONSENSUS,
  test3: bool = True,
  audio: bool = True,
) -> MspBuild:
  """Writes the release described in the module docstring under ``root``.

  Args:
    detailed_format: 'v1.11' (FileName, EmoDetail) or 'v1.6' (Workers, EmoClass_Major, ...).
    consensus_name: CONSENSUS or the pre-v1.10 spelling CONCENSUS.
    test3: whether the release has a Test3 split (newer releases).
  """
  if detailed_format not in ('v1.11', 'v1.6'):
    raise ValueError(f'detailed_format {detailed_format!r}')
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  consensus_rows = ['FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set']
  if detailed_format == 'v1.11':
    detailed_rows = ['FileName,EmoDetail']
  else:
    detailed_rows = ['FileName,Workers,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom']
  files = []
  for index, (name, split, speaker) in enumerate(_msp_plan(test3)):
    code = MSP_CODES[index % len(MSP_CODES)]
    act, val, dom = (round(1 + 6 * float(rng.random()), 1) for _ in range(3))
    gender = ('Female', 'Male')[index % 2]
    consensus_rows.append(f'{name},{code},{act},{val},{dom},{speaker},{gender},{split}')
    ratings = []
    for k in range(0 if name == UNRATED_FILE else 3 + int(rng.integers(3))):
      worker = f'WORKER{1000 + int(rng.integers(40)):05d}'
      if code == 'X':
        primary = MSP_WORDS[MSP_CODES[int(rng.integers(8))]]
      elif k < 2 or rng.random() < 0.5:
        primary = MSP_WORDS[code]
      elif rng.random() < 0.4:
        primary = _MSP_ODD_PRIMARIES[int(rng.integers(len(_MSP_ODD_PRIMARIES)))]
      else:
        primary = MSP_WORDS[MSP_CODES[int(rng.integers(9))]]
      secondary = ('', 'Frustrated,Annoyed', 'Concerned')[int(rng.integers(3))]
      a, v, d = (float(x) for x in rng.integers(1, 8, size=3))
      ratings.append((worker, primary, secondary))
      if detailed_format == 'v1.11':
        detailed_rows.append(f'{name},"{worker}; {primary}; {secondary}; A:{a}; V:{v}; D:{d};"')
      else:
        worker = worker.replace('WORKER', 'WORKER000')
        ratings[-1] = (worker, primary, secondary)
        if ';' in primary:  # v1.6 had no free-text primaries with ';'
          primary = primary.replace(';', ',')
          ratings[-1] = (worker, primary, secondary)
        detailed_rows.append(f'{name},{worker},"{primary}","{secondary}",{a},{v},{d}')
    files.append(dict(FileName=name, EmoClass=code, SpkrID=speaker, Split_Set=split, ratings=ratings))
    stem = name[: -len('.wav')]
    if index % 7 != 3:
      (root / 'Transcripts').mkdir(parents=True, exist_ok=True)
      (root / 'Transcripts' / f'{stem}.txt').write_text(f'utterance {index} of the podcast', encoding='utf-8')
    if audio:
      _write_wav(root / 'Audios' / name, 1.0 + 0.1 * (index % 9), index)
  labels = root / 'Labels'
  labels.mkdir(parents=True, exist_ok=True)
  (labels / consensus_name).write_text('\n'.join(consensus_rows) + '\n', encoding='utf-8')
  (labels / 'labels_detailed.csv').write_text('\n'.join(detailed_rows) + '\n', encoding='utf-8')
  return MspBuild(root, files)
