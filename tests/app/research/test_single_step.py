"""The single-step study's context (app/research/single_step.py): the logits after the prompt and the
plain model's greedy tokens (the study itself runs end to end in test_evaluate.py)."""

from __future__ import annotations

import numpy as np
import torch

from app.research.single_step import context_logits
from model.generate import DecodeSession, build_prompt
from model.loading import LoadedModel

PROMPT = "Name three colours."


def test_the_context_is_the_prompt_then_greedy_tokens(tiny: LoadedModel) -> None:
    session = DecodeSession(tiny)
    logits = session.prefill(build_prompt(tiny, [{"role": "user", "content": PROMPT}]))
    assert np.array_equal(context_logits(tiny, PROMPT, 0), logits.numpy().astype(np.float64))
    for _ in range(3):
        logits = session.step(tiny.input_embeddings()[int(torch.argmax(logits))])
    after = context_logits(tiny, PROMPT, 3)
    assert after.dtype == np.float64 and np.allclose(after, logits.numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(after, context_logits(tiny, PROMPT, 2))
