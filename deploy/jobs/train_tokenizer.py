"""`ray submit` entry point: train a tokenizer on a sample of a corpus on the cluster this script runs on.

    ray submit deploy/cluster-aws.yaml deploy/jobs/train_tokenizer.py -- \
        --source hf://datasets/HuggingFaceFW/fineweb-edu/sample/10BT --out /data/tokenizer --vocab-size 32768

The cluster launcher copies only this file to the head node, so tokshard must already be installed on every node
(the cluster YAMLs do it in setup_commands). Arguments are those of `tokshard train-tokenizer`; `--address auto`
(join the running cluster) is added unless given.
"""

import sys

from tokshard.pipeline.cli import main_on_cluster

if __name__ == "__main__":
    sys.exit(main_on_cluster("train-tokenizer", sys.argv[1:]))
