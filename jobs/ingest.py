"""Ray job: ingest a feature layout into a store (local path or s3://).

    ray job submit --working-dir . -- python jobs/ingest.py --layout npy-split \
        --root s3://bucket/THUMOS14 --out s3://bucket/stores/thumos14

Takes exactly the arguments of ``acl-dist ingest``. Ingest is a single streaming process
(I/O bound); it runs on whichever node executes the job's driver.
"""

import sys

from acl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
