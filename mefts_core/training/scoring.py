"""Multiple-choice scoring for decoders: each option's length-normalised log-likelihood given the context.

Rows are left-padded so that every option's tokens sit at the end; the model then only has to produce logits for the
last `max option length + 1` positions (`logits_to_keep`), not for the whole sequence over a 49K-50K vocabulary.
Training uses the same scores as logits of a softmax over the options (cross-entropy on the right one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def encode_choices_lm(tokenizer: Any, context: str, choices: list[str] | tuple[str, ...],
                      max_seq_len: int) -> dict[str, list[list[int]]]:
    """Token ids of context + " " + option for each option, and how many trailing tokens belong to the option.

    The context is truncated from the left when too long, so the option is never cut.
    """
    ctx_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    rows, n_option = [], []
    for choice in choices:
        opt = tokenizer(" " + choice.strip(), add_special_tokens=False)["input_ids"][: max_seq_len - 1]
        keep = max(1, max_seq_len - len(opt))
        rows.append(ctx_ids[-keep:] + opt)
        n_option.append(len(opt))
    return {"input_ids": rows, "n_option": n_option}


def collate_choices_lm(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad (B, C, T) ids with an attention mask, an option mask over the last positions, and labels."""
    n_choices = max(len(f["input_ids"]) for f in features)
    length = max(len(r) for f in features for r in f["input_ids"])
    ids = torch.full((len(features), n_choices, length), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    option = torch.zeros_like(ids, dtype=torch.bool)
    choice_mask = torch.zeros((len(features), n_choices), dtype=torch.bool)
    for i, f in enumerate(features):
        for j, (row, n_opt) in enumerate(zip(f["input_ids"], f["n_option"])):
            ids[i, j, length - len(row) :] = torch.tensor(row)
            att[i, j, length - len(row) :] = 1
            option[i, j, length - n_opt :] = True
            choice_mask[i, j] = True
        att[i, len(f["input_ids"]) :, -1] = 1  # padded options attend to one token: no empty rows
    labels = torch.tensor([f["label"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": att, "option_mask": option, "choice_mask": choice_mask,
            "labels": labels}


def choice_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, C) mean log-probability of each option's tokens; padded options get -inf."""
    ids, att, option = batch["input_ids"], batch["attention_mask"], batch["option_mask"]
    b, c, t = ids.shape
    ids, att, option = ids.view(b * c, t), att.view(b * c, t), option.view(b * c, t)
    keep = int(option.sum(-1).max().item()) + 1  # logits at position p predict token p + 1
    position_ids = (att.cumsum(-1) - 1).clamp_min(0)  # left padding: positions start at each row's first token
    logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids, logits_to_keep=keep).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B*C, keep-1, V)
    target = ids[:, t - keep + 1 :]  # (B*C, keep-1)
    mask = option[:, t - keep + 1 :].float()
    tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    scores = (tok * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    scores = scores.view(b, c)
    return scores.masked_fill(~batch["choice_mask"], float("-inf"))


class ChoiceScorer(nn.Module):
    """A causal LM seen as a multiple-choice model: forward(**batch) returns {"logits": (B, C) option scores}."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, option_mask: torch.Tensor,
                choice_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "option_mask": option_mask,
                 "choice_mask": choice_mask}
        return {"logits": choice_scores(self.lm, batch)}


def choice_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the right option under a softmax over the options' scores."""
    return F.cross_entropy(scores, labels)
