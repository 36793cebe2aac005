"""A control for tests/e2e/test_distributed.py: tuner with the loss normalised per process
(each process divides by its own trained tokens, DDP then averages the processes' means).
Run with torchrun like tuner itself (`per_process_mean.py train CONFIG`); it must NOT match
the single-process run. It is tuner's own training with only the step's gradient
accumulation replaced, through the loop's hooks."""

import sys

import torch

from tuner.config import load_config
from tuner.train.loop import train
from tuner.train.loss import trained_token_count
from tuner.train.setup import Hooks
from tuner.train.step import Totals, reduce_sum


def per_process_mean(model, batches, accelerator, objective):
    local = sum(trained_token_count(b["labels"]) for b in batches)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for batch in batches:
        summed = model(**batch)
        accelerator.backward(summed / local)
        loss_sum += summed.detach().double()
    loss_sum, count = reduce_sum(accelerator, loss_sum), reduce_sum(accelerator, local)
    return Totals({"loss": loss_sum}, {"trained_tokens": count}, loss_sum / count)


assert sys.argv[1] == "train", "usage: per_process_mean.py train CONFIG"
train(load_config(sys.argv[2]), hooks=Hooks(accumulate=per_process_mean))
