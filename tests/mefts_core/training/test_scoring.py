"""Decoder multiple-choice scoring: length-normalised log-likelihood of each option."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mefts_core.backbones import load_backbone
from mefts_core.training.scoring import choice_loss, choice_scores, collate_choices_lm, encode_choices_lm


def _reference(model, tok, context: str, choice: str) -> float:
    """Mean log-prob of the option tokens, from one unpadded full-sequence forward."""
    ctx = tok(context)["input_ids"]
    opt = tok(" " + choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + opt])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return sum(logp[len(ctx) + k - 1, t].item() for k, t in enumerate(opt)) / len(opt)


def test_scores_match_an_unpadded_reference_and_padding_is_masked():
    model, tok = load_backbone("tiny-llama", head="causal_lm", num_layers=2)
    model.eval()
    items = [("the sky is", ["blue", "a large green elephant"], 0), ("two plus two is", ["four", "five", "six"], 0)]
    feats = [{**encode_choices_lm(tok, c, ch, 64), "label": y} for c, ch, y in items]
    batch = collate_choices_lm(feats, tok.pad_token_id)
    with torch.no_grad():
        scores = choice_scores(model, batch)
    assert scores.shape == (2, 3) and scores[0, 2] == float("-inf")
    for i, (c, ch, _) in enumerate(items):
        for j, option in enumerate(ch):
            assert scores[i, j].item() == pytest.approx(_reference(model, tok, c, option), abs=1e-4)
    loss = choice_loss(choice_scores(model, batch), batch["labels"])
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_real_smollm2_prefers_the_right_answer():
    model, tok = load_backbone("smollm2-135m", head="causal_lm")
    model.eval()
    items = [("The capital of France is", ["Paris.", "a banana.", "the ocean."], 0),
             ("Water freezes at a temperature of", ["zero degrees Celsius.", "five hundred degrees Celsius."], 0)]
    batch = collate_choices_lm([{**encode_choices_lm(tok, c, ch, 64), "label": y} for c, ch, y in items],
                               tok.pad_token_id)
    with torch.no_grad():
        assert choice_scores(model, batch).argmax(-1).tolist() == [0, 0]
