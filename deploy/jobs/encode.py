"""`ray submit` entry point: encode a corpus on the cluster this script runs on.

    ray submit deploy/cluster-aws.yaml deploy/jobs/encode.py -- \
        --source hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT --tokenizer /data/tokenizer --out /data/shards

The cluster launcher copies only this file to the head node, so tokshard must already be installed on every node
(the cluster YAMLs do it in setup_commands). Arguments are those of `tokshard encode`; `--address auto` (join the
running cluster) is added unless given.
"""

import sys

from tokshard.pipeline.cli import main_on_cluster

if __name__ == "__main__":
    sys.exit(main_on_cluster("encode", sys.argv[1:]))
