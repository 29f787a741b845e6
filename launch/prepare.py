"""Loads a corpus and writes <out_dir>/utterances.parquet and votes.parquet, printing a summary.

  python launch/prepare.py --corpus=crema_d --corpus_path=../shared/data/crema-d --out_dir=runs/crema \
      --crema_modality=voice --crema_reference_modality=audiovisual --label_set=crema_d
  python launch/prepare.py --corpus=demo --out_dir=runs/demo          # generates the demo corpus
  python launch/prepare.py --corpus=manifest --corpus_path=utts.csv --manifest_votes=votes.jsonl \
      --out_dir=runs/mine
  python launch/prepare.py --corpus=iemocap --corpus_path=/data/IEMOCAP_full_release --out_dir=runs/iemocap \
      --label_set=iemocap4                       # the 4-class protocol, test = Session5
  python launch/prepare.py --corpus=msp_podcast --corpus_path=/data/MSP-Podcast --out_dir=runs/msp \
      --label_set=msp_podcast                    # 8 classes, X and O utterances dropped

IEMOCAP and MSP-Podcast apply a protocol (--iemocap_protocol, --msp_protocol; defaults match the
field) and print what it kept and dropped and why; <out_dir>/protocol.json records it, with the
label set later stages must use and the corpus's test splits (MSP-Podcast: test1, test2[, test3]).
"""

from absl import app, flags

from perax.core import cli
from perax.data import corpora

_CORPUS = flags.DEFINE_enum('corpus', None, corpora.CORPORA, 'Which corpus to load.', required=True)
_CORPUS_PATH = flags.DEFINE_string(
  'corpus_path',
  None,
  'Corpus directory or manifest; for demo, where it is (or is generated: default <out_dir>/demo_corpus).',
)
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory.', required=True)
_LABEL_SET = flags.DEFINE_string(
  'label_set',
  None,
  'Label set (name or comma-separated labels) whose coverage is reported; IEMOCAP and MSP-Podcast '
  "check it against their protocol's (default: the protocol's own set).",
)
_LENIENT = flags.DEFINE_bool('lenient', False, 'Skip and count malformed input instead of failing.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the demo corpus and of speaker splits.')
_CREMA_MODALITY = flags.DEFINE_enum(
  'crema_modality',
  'voice',
  ['voice', 'face', 'audiovisual'],
  'CREMA-D rater pool whose votes are the corpus votes.',
)
_CREMA_REFERENCE = flags.DEFINE_enum(
  'crema_reference_modality',
  None,
  ['voice', 'face', 'audiovisual'],
  'CREMA-D rater pool written as reference_votes.parquet (none by default).',
)
_IEMOCAP_SELF = flags.DEFINE_bool(
  'iemocap_self_evaluations', False, "Count the IEMOCAP actors' self-evaluations as votes."
)
_IEMOCAP_TEST = flags.DEFINE_integer(
  'iemocap_test_session', 5, 'IEMOCAP session used as test (folds are the sessions: column fold).'
)
_IEMOCAP_DEV = flags.DEFINE_integer(
  'iemocap_dev_session', None, 'IEMOCAP session used as dev (none by default).'
)
_IEMOCAP_PROTOCOL = flags.DEFINE_enum(
  'iemocap_protocol',
  '4class',
  ['4class', 'any_in_set', 'full', 'none'],
  'IEMOCAP protocol. 4class (default): utterances whose consensus is neu, hap, exc, sad or ang '
  '(5,531 in the full release), classes neutral, happy (+excited), sad, angry. any_in_set: every '
  'utterance with at least one vote inside --label_set (default iemocap4). full: every utterance, '
  'the full evaluator vocabulary (label set iemocap). none: everything as read, for inspection only.',
)
_MSP_PROTOCOL = flags.DEFINE_enum(
  'msp_protocol',
  '8class',
  ['8class', 'none'],
  'MSP-Podcast protocol. 8class (default): the 8 emotion classes (label set msp_podcast); EmoClass X '
  'and O utterances follow --msp_emo_class_x / --msp_emo_class_o. none: everything as read.',
)
_MSP_X = flags.DEFINE_enum(
  'msp_emo_class_x',
  'drop',
  ['drop', 'keep'],
  'MSP-Podcast utterances whose consensus EmoClass is X (no agreement): drop (default, as in the '
  "challenge's categorical task) or keep (targets from their ratings like any other's).",
)
_MSP_O = flags.DEFINE_enum(
  'msp_emo_class_o',
  'drop',
  ['drop', 'keep'],
  'MSP-Podcast utterances whose consensus EmoClass is O (other): drop (default) or keep.',
)
_OUTSIDE_VOTES = flags.DEFINE_enum(
  'outside_votes',
  'drop',
  ['drop', 'other'],
  "IEMOCAP and MSP-Podcast: votes outside the protocol's classes (frustrated, Other, ...) are counted "
  "per utterance (column n_outside) and then dropped (default) or kept as an explicit class 'other' "
  '(label sets iemocap4_other, msp_podcast_other).',
)
_MANIFEST_VOTES = flags.DEFINE_string(
  'manifest_votes', None, 'Votes table(s) of a manifest corpus, comma-separated.'
)
_EMODB_UNRECOGNISED = flags.DEFINE_string(
  'emodb_unrecognised_label',
  None,
  'Label voted by EmoDB listeners who missed the intended emotion (left out by default).',
)


def _options() -> dict:
  """The chosen corpus's loader options, from its flags."""
  return {
    'crema_d': {'modality': _CREMA_MODALITY.value, 'reference_modality': _CREMA_REFERENCE.value},
    'iemocap': {
      'self_evaluations': _IEMOCAP_SELF.value,
      'test_session': _IEMOCAP_TEST.value,
      'dev_session': _IEMOCAP_DEV.value,
      'protocol': _IEMOCAP_PROTOCOL.value,
      'outside_votes': _OUTSIDE_VOTES.value,
    },
    'msp_podcast': {
      'protocol': _MSP_PROTOCOL.value,
      'emo_class_x': _MSP_X.value,
      'emo_class_o': _MSP_O.value,
      'outside_votes': _OUTSIDE_VOTES.value,
    },
    'manifest': {'votes': _MANIFEST_VOTES.value},
    'emodb': {'unrecognised_label': _EMODB_UNRECOGNISED.value},
  }.get(_CORPUS.value, {})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  corpora.prepare(
    _CORPUS.value,
    _CORPUS_PATH.value,
    _OUT_DIR.value,
    label_set=_LABEL_SET.value,
    lenient=_LENIENT.value,
    seed=_SEED.value,
    **_options(),
  )


if __name__ == '__main__':
  cli.run(main)
