"""Ray job: the ACL rounds on the cluster this job runs on.

    ray job submit --working-dir . -- python jobs/run_acl.py --store s3://bucket/stores/anet12 \
        --out s3://bucket/runs/anet12-u1 --mode unsupervised --num-clusters 100 --config anet12

Takes exactly the arguments of ``acl-dist run``. Inside a job, Ray is already running
(``RAY_ADDRESS`` is set), so the run is sized to what the cluster can hold (its autoscaler's
node types), prints its plan, asks the autoscaler for it and waits for the nodes
(docs/cluster.md). ``--plan [--json] [--wait]`` shows the plan without running.
"""

import sys

from acl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
