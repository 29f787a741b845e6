"""The end-to-end job: corpus -> proxies -> distributions -> DiME-Aug -> training -> evaluation -> analysis -> report."""

from perax.pipeline.run import (
  STAGES,
  PipelineConfig,
  run_pipeline,
  training_config,
)
