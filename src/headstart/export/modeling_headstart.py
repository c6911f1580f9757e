"""A headstart text classifier as a transformers model: the encoder, the tokens pooled
as the run pooled them (``config.headstart_pooling``: ``mean``, ``max`` or ``cls``, over
the attention mask), and the run's linear head.

headstart's ``export --format hf`` copies this file into the folders of text runs that no
built-in transformers class reproduces (transformers' ``*ForSequenceClassification``
classes feed their head the first token, through a pooler); ``config.json``'s
``auto_map`` names the class below, so that::

    AutoModelForSequenceClassification.from_pretrained(FOLDER, trust_remote_code=True)

loads it.  It imports only torch and transformers: the folder needs no headstart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["HeadstartForSequenceClassification", "pool"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[N, L, D]`` hidden states -> ``[N, D]``, over the tokens where ``mask`` is 1
    (the arithmetic of headstart's ``headstart.sources.hf.pool``)."""
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class HeadstartForSequenceClassification(PreTrainedModel):
    """``head(pool(encoder(x)))``: the encoder is the architecture's ``AutoModel`` built
    from this config, without the pooler layer headstart drops (its output is unused);
    ``head`` is ``nn.Linear(hidden_size, num_labels)``."""

    base_model_prefix = "encoder_model"  # the checkpoint holds the encoder's keys unprefixed

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        pooling = getattr(config, "headstart_pooling", None)
        if pooling not in ("mean", "max", "cls"):
            raise ValueError(f"config.headstart_pooling is {pooling!r}; want mean, max or cls")
        self.pooling = pooling
        self.encoder_model = AutoModel.from_config(config)
        pooler = getattr(self.encoder_model, "pooler", None)
        if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
            self.encoder_model.pooler = None
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **inputs: Any,
    ) -> Any:
        """Logits ``[N, num_labels]``; with ``labels``, the cross-entropy loss too.  Other
        tokenizer outputs (``token_type_ids``) go to the encoder."""
        inputs = {k: v for k, v in inputs.items() if v is not None}
        hidden = self.encoder_model(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        logits = self.head(pool(hidden, attention_mask, self.pooling))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.view(-1))
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)
