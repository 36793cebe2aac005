"""Checkpoint files: complete ones only, nothing unpickled, state round-trips exactly."""

from __future__ import annotations

import pickle

import pytest
import torch

from tuner.errors import UserError
from tuner.train.checkpoint import (
    TrainerState,
    checkpoint_dirs,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def tiny(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def setup(seed=0):
    from transformers import get_scheduler

    model = tiny(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=1, num_training_steps=10)
    return model, opt, sched


def one_step(model, opt, sched):
    loss = model(torch.randn(3, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def state(step):
    return TrainerState(step=step, trained_tokens=10 * step, data_fingerprint="abc", rows=8, micro_batch_size=2,
                        gradient_accumulation_steps=1, world_size=1, seed=0, total_steps=10)


def test_round_trip_is_exact_including_rng(tmp_path):
    model, opt, sched = setup()
    for _ in range(3):
        one_step(model, opt, sched)
    path = save_checkpoint(tmp_path, model, opt, sched, state(3))
    # Continue the original run by one step: inputs drawn from the RNG as it was at the save.
    one_step(model, opt, sched)
    continued = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = setup(seed=123)  # different initial weights, fresh optimizer
    torch.manual_seed(999)  # and a different RNG state: the checkpoint must restore all of it
    restored = load_checkpoint(path, model2, opt2, sched2)
    assert restored.step == 3 and restored.trained_tokens == 30
    one_step(model2, opt2, sched2)
    assert all(torch.equal(a, b) for a, b in zip(continued, model2.parameters()))
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_partial_checkpoint_is_skipped_by_auto(tmp_path):
    model, opt, sched = setup()
    save_checkpoint(tmp_path, model, opt, sched, state(4))
    partial = tmp_path / "checkpoints" / "step-000008"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"half written")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000004"]
    assert find_resume_checkpoint("auto", tmp_path).name == "step-000004"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        find_resume_checkpoint(str(partial), tmp_path)


def test_save_total_limit_keeps_newest(tmp_path):
    model, opt, sched = setup()
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, model, opt, sched, state(step), keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000006", "step-000008"]


class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("victim", ["optimizer.safetensors", "trainable.safetensors", "rng-0.safetensors"])
def test_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, victim):
    model, opt, sched = setup()
    path = save_checkpoint(tmp_path, model, opt, sched, state(2))
    marker = tmp_path / "pwned"
    (path / victim).write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"x": Payload(marker)}, path / "optimizer.pt")  # a stray pickle file is never read
    with pytest.raises(UserError, match="damaged or not a tuner checkpoint"):
        load_checkpoint(path, *setup())
    assert not marker.exists()


def test_checkpoint_from_another_model_is_refused(tmp_path):
    model, opt, sched = setup()
    path = save_checkpoint(tmp_path, model, opt, sched, state(2))
    other = torch.nn.Linear(4, 2)
    other_opt = torch.optim.AdamW(other.parameters())
    from transformers import get_scheduler

    with pytest.raises(UserError, match="different model"):
        load_checkpoint(path, other, other_opt, get_scheduler("constant", other_opt))
