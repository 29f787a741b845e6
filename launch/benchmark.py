"""Benchmarks, each against a baseline measured in the same run (warm, compilation excluded).

  python launch/benchmark.py --bench=votes      # perax sampler vs HF generate(num_return_sequences=K)
  python launch/benchmark.py --bench=pipeline   # Grain + DiME-Aug + log-mel vs a plain librosa loop

Each benchmark's own flags are defined in its module under perax/benchmarks/.
"""

from absl import app, flags

from perax.benchmarks import pipeline as pipeline_bench
from perax.benchmarks import votes as votes_bench

BENCHMARKS = {'votes': votes_bench.run, 'pipeline': pipeline_bench.run}

_BENCH = flags.DEFINE_enum('bench', None, sorted(BENCHMARKS), 'Which benchmark to run.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  BENCHMARKS[_BENCH.value]()


if __name__ == '__main__':
  app.run(main)
