"""tuner's GRPO training with completions fixed by their prompt and generation index (not by the
process, the step's batch or the sampler), so that one process and two sample the same: the
objective is registered under rl: grpo in tuner's objective registry, a subclass whose `_generate`
returns them. Run like tuner (`grpo_fixed_completions.py train CONFIG`, or under torchrun).
tests/e2e/test_grpo_distributed.py compares one process with two."""

import os
import sys

import torch

from tuner.config import load_config
from tuner.train import objectives
from tuner.train.loop import train
from tuner.train.objectives.grpo import GRPO


class FixedCompletions(GRPO):
    def _generate(self, model, prompt_ids, prompt_mask, accelerator, seed, step):
        eos, pad, most = self.tokenizer.eos_token_id, self.pad_token_id, self.s.max_completion_length
        rows = []
        for i, (ids, mask) in enumerate(zip(prompt_ids.tolist(), prompt_mask.tolist())):
            prompt = [t for t, m in zip(ids, mask) if m]
            j = i % self.s.num_generations  # the generation index within the prompt's group
            key = sum((k + 1) * t for k, t in enumerate(prompt)) * 131 + 17 * j + step
            # the last completion of the prompt named by $CUT_PROMPT is cut at max_completion_length; the others
            # are shorter and end in EOS
            cut = j == self.s.num_generations - 1 and self.tokenizer.decode(prompt) == os.environ.get("CUT_PROMPT")
            n = most if cut else 1 + key % (most - 1)
            tokens = torch.randint(100, 5000, (n,), generator=torch.Generator().manual_seed(key)).tolist()
            rows.append(tokens + [eos] if n < most else tokens)
        width = max(map(len, rows))
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


assert sys.argv[1] == "train", "usage: grpo_fixed_completions.py train CONFIG"
objectives.OBJECTIVES["grpo"] = FixedCompletions
train(load_config(sys.argv[2]))
