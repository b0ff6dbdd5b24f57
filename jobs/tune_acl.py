"""Ray job: an ACL hyperparameter search (Ray Tune) on the cluster this job runs on.

    ray job submit --working-dir . -- python jobs/tune_acl.py --store s3://bucket/stores/anet12 \
        --out s3://bucket/tune/anet12-zk --num-clusters 100 --config anet12 --num-samples 16

Takes exactly the arguments of ``acl-dist tune``. Trials run as many at a time as the
cluster holds (each trial's Ray Train workers plus one CPU for Ray Data and clustering);
an interrupted search continues with ``--resume s3://bucket/tune/anet12-zk``.
"""

import sys

from acl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
