"""Which rows go into which optimizer step."""

from __future__ import annotations

from tuner.config.schema import TrainingBlock
from tuner.train.step_plan import StepPlan


def plan(rows, world=1, **kw):
    t = TrainingBlock(learning_rate=1e-4, **{"num_epochs": 1, **kw})
    return StepPlan.build(rows, t, world)


def test_steps_per_epoch_and_totals():
    p = plan(10, micro_batch_size=2, gradient_accumulation_steps=2, num_epochs=3)
    assert p.micro_batches_per_epoch == 5 and p.steps_per_epoch == 3 and p.total_steps == 9
    assert plan(10, micro_batch_size=2, num_epochs=0.5).total_steps == 3
    assert plan(10, micro_batch_size=2, max_steps=7).total_steps == 7


def test_every_row_once_per_epoch_and_reshuffled():
    p = plan(10, micro_batch_size=3, gradient_accumulation_steps=2, num_epochs=2)
    by_epoch: dict[int, list[int]] = {}
    for _, epoch, group in p.steps(rank=0):
        by_epoch.setdefault(epoch, []).extend(i for mb in group for i in mb)
    assert sorted(by_epoch[0]) == list(range(10)) and sorted(by_epoch[1]) == list(range(10))
    assert by_epoch[0] != by_epoch[1]
    assert [g for *_, g in p.steps(rank=0)] == [g for *_, g in p.steps(rank=0)]  # deterministic


def test_resume_from_a_step_continues_the_same_sequence():
    p = plan(10, micro_batch_size=2, gradient_accumulation_steps=2, num_epochs=3)
    full = list(p.steps(rank=0))
    assert list(p.steps(rank=0, start_step=4)) == full[4:]


def test_two_processes_split_the_global_batch_of_one():
    one = plan(16, micro_batch_size=4, gradient_accumulation_steps=2)
    two = plan(16, micro_batch_size=2, gradient_accumulation_steps=2, world=2)
    assert one.total_steps == two.total_steps
    for (s, _, g1), (_, _, r0), (_, _, r1) in zip(one.steps(0), two.steps(0), two.steps(1)):
        assert [sorted(a) for a in g1] == [sorted(b + c) for b, c in zip(r0, r1)], s


def test_repeats_give_each_step_its_units_that_many_times():
    """GRPO's num_iterations: each group of units serves `repeats` consecutive steps; the epoch has that
    many times the steps; a resume inside a repeat continues it."""
    once = plan(10, micro_batch_size=2, gradient_accumulation_steps=2, num_epochs=2)
    t = TrainingBlock(learning_rate=1e-4, micro_batch_size=2, gradient_accumulation_steps=2, num_epochs=2)
    thrice = StepPlan.build(10, t, 1, repeats=3)
    assert thrice.steps_per_epoch == 3 * once.steps_per_epoch and thrice.total_steps == 3 * once.total_steps
    groups = [g for *_, g in once.steps(rank=0)]
    full = list(thrice.steps(rank=0))
    assert [g for *_, g in full] == [g for g in groups for _ in range(3)]
    assert [e for _, e, _ in full] == [e for _, e, _ in once.steps(rank=0) for _ in range(3)]
    assert list(thrice.steps(rank=0, start_step=4)) == full[4:]
    assert list(thrice.steps(rank=0, start_step=10)) == full[10:]  # inside the second epoch
