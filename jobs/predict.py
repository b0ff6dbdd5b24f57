"""Ray job: a finished run's final model over a store's videos (``acl-dist predict``).

    ray job submit --working-dir . -- python jobs/predict.py --run s3://bucket/runs/anet12-u1 \
        --store s3://bucket/stores/new-videos --out s3://bucket/dets/new-videos.json

Takes exactly the arguments of ``acl-dist predict``. Inside a job Ray is already running
(``RAY_ADDRESS``): the pass runs on GPU actors when the cluster has GPUs up, or asks its
autoscaler for one GPU and waits for it, else on CPU actors.
"""

import sys

from acl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
