"""rl: grpo without weights: its config keys and refusals, reward functions (loading, calling, the
errors that name the function and the completion), advantages as TRL 1.16 computes them, the
completion mask, the micro-batches, and the prompts dataset format."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_config, write_jsonl

from tuner.errors import UserError


def grpo(tmp_path, **extra):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi", "answer": "1"}])
    values = dict(base_model="x", rl="grpo", datasets=[{"path": str(data)}], micro_batch_size=4,
                  gradient_accumulation_steps=2, max_steps=1, learning_rate=1e-5, output_dir=str(tmp_path / "o"),
                  trl={"num_generations": 4, "reward_funcs": ["rw.f"]})
    for key, value in extra.items():
        if key == "trl":
            values["trl"] = {**values["trl"], **value}
        else:
            values[key] = value
    return make_config(tmp_path, **values)


def refused(tmp_path, **extra) -> str:
    with pytest.raises(UserError) as err:
        grpo(tmp_path, **extra)
    return str(err.value)


def test_defaults_are_trl_1_16s(tmp_path):
    from tuner.train.objectives.grpo import Settings

    cfg = grpo(tmp_path)
    assert cfg.objective == "grpo" and cfg.data.datasets[0].kind == "grpo:prompts"
    s = Settings.of(cfg)
    assert (s.beta, s.epsilon_low, s.epsilon_high, s.loss_type, s.scale_rewards, s.temperature, s.top_p,
            s.max_completion_length, s.bias_corrected_kl) == (0.0, 0.2, 0.2, "dapo", "group", 1.0, 1.0, 512, True)
    s = Settings.of(grpo(tmp_path, trl={"scale_rewards": False, "epsilon_high": 0.28, "beta": 0.04}))
    assert (s.scale_rewards, s.epsilon_high, s.beta) == ("none", 0.28, 0.04)


@pytest.mark.parametrize("extra, message", [
    ({"trl": {"loss_type": "dr_grop"}}, "'dr_grop' is not a GRPO loss type; allowed: grpo, bnpo, dr_grpo, dapo. "
                                        "Did you mean 'dr_grpo'?"),
    ({"trl": {"loss_type": "cispo"}}, "loss_type 'cispo': not supported yet"),
    ({"trl": {"use_vllm": True}}, "use_vllm: true: generation with vLLM is not supported yet"),
    ({"trl": {"vllm_server_port": 8001}}, "trl.vllm_server_port"),
    ({"trl": {"sync_ref_model": True}}, "not supported yet: reference-model syncing"),
    ({"trl": {"num_iterations": 0}}, "trl.num_iterations"),
    ({"trl": {"reward_funcs": []}}, "rl: grpo needs reward functions"),
    ({"trl": {"reward_weights": [1.0, 2.0]}}, "2 weight(s) for 1 reward function(s)"),
    ({"trl": {"reward_funcs": ["no_module_path"]}}, "is not a dotted path module.function"),
    ({"micro_batch_size": 3}, "3 x gradient_accumulation_steps 2 = 6 completions per step is not a multiple of "
                              "trl.num_generations 4"),
    ({"val_set_size": 0.1}, "val_set_size: evaluation under rl: grpo"),
    ({"sample_packing": True}, "sample_packing is for supervised fine-tuning"),
    ({"trl": {"num_generations": 1}}, "num_generations"),
])
def test_refusals_name_the_key(tmp_path, extra, message):
    assert message in refused(tmp_path, **extra)


def test_grpo_keys_and_dataset_types_need_grpo(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    msg = refused(tmp_path, datasets=[{"path": str(data), "type": "alpaca"}])
    assert "'alpaca' under rl: grpo: GRPO reads prompts only" in msg
    with pytest.raises(UserError, match="trl.reward_funcs is a GRPO setting; it applies to rl: grpo, not to "
                                        "supervised fine-tuning"):
        make_config(tmp_path, base_model="x", datasets=[{"path": str(data), "type": "alpaca"}], max_steps=1,
                    learning_rate=1e-5, output_dir=str(tmp_path / "o"), trl={"reward_funcs": ["rw.f"]})


# --------------------------------------------------------------------------- reward functions


def write_module(tmp_path, body: str, name: str = "rw"):
    (tmp_path / f"{name}.py").write_text(body)
    return tmp_path


def test_reward_functions_are_found_next_to_the_config(tmp_path):
    from tuner.train.rewards import load_reward_functions, score

    write_module(tmp_path, "def f(prompts, completions, answer, **kw):\n    return [float(a in c) for c, a in "
                           "zip(completions, answer)]\ndef g(prompts, completions, **kw):\n    return [None, 2]\n")
    funcs = load_reward_functions(["rw.f", "rw.g"], [1.0, 0.5], tmp_path)
    assert [f.short for f in funcs] == ["f", "g"] and funcs[1].weight == 0.5
    out = score(funcs, ["p", "p"], ["the 1", "no"], [[1], [2]], {"answer": ["1", "1"]})
    assert out[0] == [1.0, 0.0] and math.isnan(out[1][0]) and out[1][1] == 2.0


@pytest.mark.parametrize("body, name, message", [
    ("", "missing_mod.f", "cannot import module 'missing_mod': no such module next to the config"),
    ("import not_installed_pkg_xyz\n", "rw.f", "module 'rw' imports 'not_installed_pkg_xyz', which is not installed"),
    ("raise RuntimeError('bad import')\n", "rw.f", "importing module 'rw' raised RuntimeError: bad import"),
    ("def fn(prompts, completions, **kw):\n    return []\n", "rw.f", "has no function 'f'. Did you mean 'fn'?"),
    ("f = 3\n", "rw.f", "rw.f is a int, not a function"),
    ("def f(x):\n    return []\n", "rw.f", "does not take prompts and completions"),
])
def test_loading_errors_name_the_function(tmp_path, body, name, message):
    from tuner.train.rewards import load_reward_functions

    write_module(tmp_path, body)
    with pytest.raises(UserError) as err:
        load_reward_functions([name], None, tmp_path)
    assert f"trl.reward_funcs[0] ({name})" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("body, message", [
    ("    raise KeyError('answer')", "reward function rw.f raised KeyError: 'answer' (on the prompt 'p0' and 1 more)"),
    ("    return [1.0, 'x']", "reward function rw.f returned 'x' for completion 1 ('c1') of the prompt 'p1'"),
    ("    return [1.0, float('nan')]", "returned nan for completion 1"),
    ("    return [True, 1]", "returned True for completion 0"),
    ("    return 1.0", "returned 1.0, not a list with one number per completion (2)"),
    ("    return [1.0]", "returned 1 values for 2 completions"),
])
def test_calling_errors_name_the_function_and_the_completion(tmp_path, body, message):
    from tuner.train.rewards import load_reward_functions, score

    write_module(tmp_path, "def f(prompts, completions, **kw):\n" + body + "\n")
    funcs = load_reward_functions(["rw.f"], None, tmp_path)
    with pytest.raises(UserError) as err:
        score(funcs, ["p0", "p1"], ["c0", "c1"], [[1], [2]], {})
    assert message in str(err.value)


def test_a_function_without_kwargs_for_the_columns(tmp_path):
    from tuner.train.rewards import load_reward_functions, score

    write_module(tmp_path, "def f(prompts, completions):\n    return [0.0] * len(completions)\n")
    funcs = load_reward_functions(["rw.f"], None, tmp_path)
    with pytest.raises(UserError, match="Accept \\*\\*kwargs for the columns you do not use"):
        score(funcs, ["p"], ["c"], [[1]], {"answer": ["1"]})


# --------------------------------------------------------------------------- advantages and batches


class OneProcess:
    device = torch.device("cpu")
    num_processes = 1
    process_index = 0


def objective_with(tmp_path, **trl):
    from tuner.train.objectives.grpo import GRPO

    write_module(tmp_path, "def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n"
                           "def g(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    cfg = grpo(tmp_path, trl={"reward_funcs": ["rw.f", "rw.g"], "reward_weights": [1.0, 0.5], **trl})
    return GRPO(cfg)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_by_hand(tmp_path, scale):
    obj = objective_with(tmp_path, scale_rewards=scale)
    per_func = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, math.nan], [1.0, 1.0],  # group 0
                             [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # group 1: all equal
    rewards, adv, zero = obj._advantages(per_func, OneProcess())
    assert rewards.tolist() == [1.0, 1.0, 3.0, 1.5, 2.0, 2.0, 2.0, 2.0]  # nansum with weights 1, 0.5
    g0 = torch.tensor([1.0, 1.0, 3.0, 1.5])
    centred = torch.cat([g0 - g0.mean(), torch.zeros(4)])
    std = {"group": torch.cat([g0.std().expand(4), torch.zeros(4)]), "batch": rewards.std().expand(8),
           "none": None}[scale]
    expected = centred if std is None else centred / (std + 1e-4)
    torch.testing.assert_close(adv, expected)
    assert zero.tolist() == [False, True]  # the group whose rewards are all equal is counted


def test_completion_mask_and_micro_batch():
    from tuner.train.objectives.grpo import _completion_mask, _left_padded, _micro_batch

    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    mask, truncated = _completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]  # up to and including EOS
    assert truncated.tolist() == [False, False, True]
    prompts, pmask = _left_padded([[1, 3], [1, 3, 4], [1]], pad=0)
    assert prompts.tolist() == [[0, 1, 3], [1, 3, 4], [0, 0, 1]]
    batch = _micro_batch(torch.cat([prompts, ids], 1)[:1], torch.cat([pmask, mask], 1)[:1], 3, mask[:1],
                         torch.tensor([0.5]))
    # the all-padding column on the left and the columns after the last kept completion token are dropped
    assert batch["input_ids"].tolist() == [[1, 3, 5, 6, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert batch["completion_mask"].tolist() == [[1, 1, 1]]


def test_sampling_seed_depends_on_seed_step_and_process_only():
    from tuner.train.objectives.grpo import sampling_seed

    assert sampling_seed(3, 5, 0) == sampling_seed(3, 5, 0)
    assert len({sampling_seed(3, s, r) for s in range(50) for r in range(4)}) == 200


def test_plan_counts_prompts(tmp_path):
    obj = objective_with(tmp_path)
    t = obj.plan_training(obj._cfg.training, tokenizer=None)
    assert (t.micro_batch_size, t.gradient_accumulation_steps) == (2, 1)  # 4 x 2 completions / 4 per prompt


def test_num_iterations_keeps_the_rollout_for_its_steps_and_checkpoints_it(tmp_path, monkeypatch):
    """num_iterations 3: steps 0, 3, ... sample; steps 1 and 2 get the same micro-batches back; the kept
    rollout (with the old log-probs) round-trips through state_dict, and a checkpoint inside a cycle
    without it is refused."""
    import contextlib

    import tuner.train.objectives.grpo as grpo_module

    obj = objective_with(tmp_path, num_iterations=3)
    assert obj.updates_per_rollout == 3 and obj.state_dict() == {}
    sampled = []

    def fake_sample(module, batches, accelerator, step):
        sampled.append(step)
        return [{"input_ids": torch.tensor([[step, 1]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
                 "position_ids": torch.tensor([[0, 1]]), "completion_mask": torch.ones(1, 1, dtype=torch.long),
                 "advantages": torch.tensor([0.5]), "reward": torch.tensor(2.0, dtype=torch.float64)}]

    class Process(OneProcess):
        autocast = staticmethod(contextlib.nullcontext)

        def unwrap_model(self, module):
            return module

    obj._sample = fake_sample
    monkeypatch.setattr(grpo_module, "completion_logps", lambda model, **kw: torch.tensor([[-1.25]]))
    module = type("Wrapped", (), {"model": None})()
    first = obj.rollout(module, [], Process(), 0)
    assert first[0]["old_logps"].tolist() == [[-1.25]]
    assert obj.rollout(module, [], Process(), 1) is first and obj.rollout(module, [], Process(), 2) is first
    saved = obj.state_dict()
    assert int(saved["rollout_step"]) == 0 and saved["0/old_logps"].tolist() == [[-1.25]]
    again = objective_with(tmp_path, num_iterations=3)
    again.load_state_dict(saved, 2)
    as_lists = lambda batches: [{k: v.tolist() for k, v in b.items()} for b in batches]
    assert as_lists(again._rollout) == as_lists(first)
    again.load_state_dict({}, 3)  # a checkpoint at a multiple of num_iterations needs none
    with pytest.raises(UserError, match="does not hold the batch sampled at step 1"):
        objective_with(tmp_path, num_iterations=3).load_state_dict({}, 1)
    obj.rollout(module, [], Process(), 3)
    assert sampled == [0, 3]


def test_old_logps_make_the_ratio_and_its_clipping(tmp_path):
    """With the rollout's log-probs the ratio is exp(logp - old): clipped where it leaves [1 - eps, 1 + eps]
    in the direction of the advantage (TRL's clip_ratio metrics)."""
    from tuner.train.objectives.grpo import GRPOLoss

    obj = objective_with(tmp_path, num_iterations=2, beta=0.0, loss_type="dapo", epsilon=0.2)
    logits = torch.zeros(1, 3, 4, requires_grad=True)

    class Model(torch.nn.Module):
        def forward(self, input_ids, **kw):
            return type("Out", (), {"logits": logits.expand(input_ids.shape[0], -1, -1)})()

    loss = GRPOLoss.__new__(GRPOLoss)
    torch.nn.Module.__init__(loss)
    loss.model, loss.objective, loss.reference = Model(), obj, None
    batch = {"input_ids": torch.tensor([[0, 1, 2], [0, 3, 2]]), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "position_ids": torch.tensor([[0, 1, 2]] * 2), "completion_mask": torch.ones(2, 2, dtype=torch.long),
             "advantages": torch.tensor([1.0, -1.0])}
    logp = math.log(0.25)  # uniform over 4 tokens
    old = torch.tensor([[logp - 0.5, logp], [logp + 0.5, logp]])  # ratios e^0.5 (adv +) and e^-0.5 (adv -)
    out = loss(**batch, old_logps=old)
    ratio = torch.exp(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
    clipped = torch.clamp(ratio, 0.8, 1.2)
    adv = batch["advantages"][:, None]
    expected = -torch.min(ratio * adv, clipped * adv)
    assert float(out["loss"].detach()) == pytest.approx(float(expected.sum()), abs=1e-6)
    assert (float(out["clip/high"]), float(out["clip/low"])) == (1.0, 1.0)
    assert float(loss(**batch)["loss"].detach()) == pytest.approx(float(-adv.expand(2, 2).sum()), abs=1e-6)  # no old: ratio 1


# --------------------------------------------------------------------------- the prompts format


def test_prompt_rows(tmp_path, smol_tokenizer):
    from tuner.data.formats import EncodeContext
    from tuner.data.formats.base import FieldError
    from tuner.data.formats.prompts import Prompts

    cfg = grpo(tmp_path)
    ds = cfg.data.datasets[0]
    rows = [{"messages": [{"role": "user", "content": "Hi"}], "answer": "1", "n": 2},
            {"prompt": "Count:", "answer": "2"},
            {"prompt": [{"role": "user", "content": "Yo"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
            {"answer": "3"}]
    out = Prompts().encode_many(rows, ds, EncodeContext(smol_tokenizer, template=smol_tokenizer.chat_template))
    text = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                              add_generation_prompt=True)
    assert out[0][0] == smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert out[0][1] == '[{"role": "user", "content": "Hi"}]' and out[0][2] == '{"answer": "1", "n": 2}'
    assert out[1][0] == smol_tokenizer("Count:")["input_ids"] and out[1][1] == '"Count:"'
    assert isinstance(out[2], tuple)
    assert isinstance(out[3], FieldError) and "must be the user's turn" in str(out[3])
    assert isinstance(out[4], FieldError) and "is missing" in str(out[4])
