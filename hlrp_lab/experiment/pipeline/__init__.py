"""``hlrp-lab pipeline``: stage specs run in order as ``hlrp-lab run`` runs them, a completed run of the same
spec reused, ending with one study report (docs/PIPELINE.md)."""

from hlrp_lab.experiment.pipeline.run import PipelineResult, run_pipeline

__all__ = ["PipelineResult", "run_pipeline"]
