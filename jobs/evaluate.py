"""Ray job: detection mAP of a result file (ActivityNet protocol).

    ray job submit --working-dir . -- python jobs/evaluate.py \
        --detections s3://bucket/runs/anet/detections.json --gt s3://bucket/stores/anet12 \
        --subset validation --json

Takes exactly the arguments of ``acl-dist evaluate``.
"""

import sys

from acl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
