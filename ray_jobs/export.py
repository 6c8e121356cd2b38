"""Export a training checkpoint as an inference folder (see ``python -m vlsa.export --help``).

    ray job submit -- python ray_jobs/export.py --checkpoint s3://BUCKET/runs/RUN --out s3://BUCKET/exports/RUN \\
        --config llava_next_llama3_8b_stage2

The job runs in the submitted job's driver process: reading the checkpoint, building the inference parts and
writing the folder need no Ray workers. S3 credentials come from the node, as for every job.
"""

from __future__ import annotations

import sys

from vlsa.export.__main__ import main

if __name__ == "__main__":
    main(sys.argv[1:])
