"""The end-to-end job: corpus -> proxies -> distributions -> DiME-Aug -> training -> evaluation -> analysis -> report.

  from perax import pipeline
  outputs = pipeline.run_pipeline(pipeline.PipelineConfig(out_dir='runs/demo'))

- :class:`PipelineConfig`: what runs (defaults taken from the stages: ProxyJob, analysis.Settings).
- :func:`run_pipeline`: runs or resumes every stage, each keyed by its inputs (:mod:`perax.pipeline.stages`).
- :data:`STAGES`: the stage names, in order.
- :func:`training_config`: the training config a plan runs with (for launch/train.py-style reuse).
"""

from perax.pipeline.config import NATURAL_LABEL_SETS, NATURAL_TEST_SPLITS, PipelineConfig
from perax.pipeline.run import STAGES, run_pipeline
from perax.pipeline.training import REFERENCES, training_config

__all__ = [
  'NATURAL_LABEL_SETS',
  'NATURAL_TEST_SPLITS',
  'REFERENCES',
  'STAGES',
  'PipelineConfig',
  'run_pipeline',
  'training_config',
]
