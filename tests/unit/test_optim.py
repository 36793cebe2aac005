"""Every optimizer name the schema accepts builds, steps on CPU and lowers a loss; the
bitsandbytes ones keep 8-bit states where their name says so, take adam_beta1/2 and
adam_epsilon, and survive tuner's checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from tuner.config.schema import OPTIMIZERS, TrainingBlock
from tuner.train.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from tuner.train.optim import BNB, build_optimizer, build_scheduler


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # Two 96x96 = 9216-element weights: above bitsandbytes' 4096-element threshold for 8-bit states,
    # so their states share bitsandbytes' one qmap tensor (which a checkpoint must survive).
    return torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.Tanh(), torch.nn.Linear(96, 96), torch.nn.Tanh(),
                               torch.nn.Linear(96, 4))


def training(name: str, **extra) -> TrainingBlock:
    return TrainingBlock(learning_rate=1e-2 if name not in ("sgd", "adagrad") else 5e-2, optimizer=name,
                         num_epochs=1, **extra)


def loss_of(m: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(32, 96)
    return (m(x) - 0.5).pow(2).mean()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_on_cpu_and_lowers_the_loss(name):
    m = model()
    opt = build_optimizer(m.parameters(), training(name))
    first = float(loss_of(m))
    for _ in range(6):
        loss_of(m).backward()
        opt.step()
        opt.zero_grad()
    assert float(loss_of(m)) < first, name
    if name in BNB:
        bits = BNB[name][1]
        states = opt.state[m[0].weight]
        dtypes = {states[k].dtype for k in ("state1", "state2") if k in states}  # the moment estimates
        assert dtypes == ({torch.uint8} if bits == 8 else {torch.float32}), (name, dtypes)


def test_adam_betas_and_epsilon_reach_the_optimizer():
    for name in ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_32bit"):
        opt = build_optimizer(model().parameters(), training(name, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-5))
        group = opt.param_groups[0]
        assert tuple(group["betas"]) == (0.8, 0.95) and group["eps"] == 1e-5, name
    lion = build_optimizer(model().parameters(), training("lion_8bit", adam_beta1=0.8, adam_beta2=0.95))
    assert tuple(lion.param_groups[0]["betas"]) == (0.8, 0.95)  # as the HF Trainer passes them


def test_weight_decay_skips_biases():
    opt = build_optimizer(model().parameters(), training("adamw_bnb_8bit", weight_decay=0.1))
    decays = sorted((g["weight_decay"], {p.ndim for p in g["params"]}.pop()) for g in opt.param_groups)
    assert decays == [(0.0, 1), (0.1, 2)]


def test_8bit_state_survives_a_checkpoint_round_trip(tmp_path):
    t = training("adamw_bnb_8bit")

    def run(m, opt, steps):
        for _ in range(steps):
            loss_of(m).backward()
            opt.step()
            opt.zero_grad()

    m = model()
    opt = build_optimizer(m.parameters(), t)
    sched = build_scheduler(opt, t, 10)
    run(m, opt, 3)
    state = TrainerState(step=3, trained_tokens=0, data_fingerprint="x", rows=1, micro_batch_size=1,
                         gradient_accumulation_steps=1, world_size=1, seed=0, total_steps=10)
    path = save_checkpoint(tmp_path, m, opt, sched, state)
    run(m, opt, 1)
    expected = [p.detach().clone() for p in m.parameters()]

    m2 = model(seed=5)
    opt2 = build_optimizer(m2.parameters(), t)
    load_checkpoint(path, m2, opt2, build_scheduler(opt2, t, 10))
    run(m2, opt2, 1)
    for a, b in zip(expected, m2.parameters()):
        assert torch.equal(a, b.detach())
