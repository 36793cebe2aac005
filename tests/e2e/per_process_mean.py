"""A control for tests/e2e/test_distributed.py: tuner with the loss normalised per process
(each process divides by its own trained tokens, DDP then averages the processes' means).
Run with torchrun like tuner itself; it must NOT match the single-process run."""

import sys

import torch

import tuner.train.loop as loop
from tuner.cli import main
from tuner.train.loss import trained_token_count


def per_process_mean(model, batches, accelerator):
    local = sum(trained_token_count(b["labels"]) for b in batches)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for batch in batches:
        summed = model(**batch)
        accelerator.backward(summed / local)
        loss_sum += summed.detach().double()
    return loop._reduce_sum(accelerator, loss_sum), loop._reduce_sum(accelerator, local)


loop.accumulate_gradients = per_process_mean
sys.exit(main(sys.argv[1:]))
