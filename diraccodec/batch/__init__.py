"""Converting whole folder trees: images to .drc files, or .drc files to images.

Each file goes into the same relative place under the destination. Work is spread over
worker processes on this machine (`run_batch`) or over a Ray cluster's actors
(`run_batch_on_ray`, with Ray imported only then); sources and destinations are local paths
or URIs that pyarrow opens (`storage`). Either way an existing output is skipped unless
overwriting is asked for, a bad file is recorded and the rest still converted, and outputs
are written atomically, so a run that is killed can simply be started again: finished files
are skipped.
"""

from diraccodec.batch.jobs import DRC_SUFFIX, BatchSettings, Job, JobResult, check_settings, plan_jobs, run_job
from diraccodec.batch.local import default_workers, run_batch
from diraccodec.batch.ray_cluster import run_batch_on_ray

__all__ = [
    "DRC_SUFFIX",
    "BatchSettings",
    "Job",
    "JobResult",
    "check_settings",
    "default_workers",
    "plan_jobs",
    "run_batch",
    "run_batch_on_ray",
    "run_job",
]
