"""tokshard's trainer: a small PyTorch GPT that streams token shards, reports validation bits-per-byte, and
exports the checkpoints the service scores text with.

One module per concept: `model` (the GPT), `optim` (Muon + AdamW, the LR schedule), `data` (windows streamed
from shards), `bpb` (bits-per-byte scoring), `checkpoint` (training and inference checkpoints), `train` (the
loop), `sample` (generation), `plot` (the loss/BPB figure), `cli` (`tokshard train` and `tokshard sample`).
Importing this package does not import torch; import the modules you need.
"""
