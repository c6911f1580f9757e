"""Applying a plan to a model: ``requires_grad`` and the optimizer's parameter groups
(:func:`apply_plan`), and the train/eval mode of frozen parts (:func:`set_train_mode`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from headstart.config.strategies import BatchNorm
from headstart.plan.lora import add_adapters, is_adapter_parameter
from headstart.plan.make import Plan


def _frozen_indices(model: Any, plan: Plan) -> list[int]:
    names = list(model.backbone.stage_names)
    return [names.index(s) for s in plan.frozen_stages]


def apply_plan(model: Any, plan: Plan) -> list[dict[str, Any]]:
    """Freeze the plan's frozen stages and return AdamW parameter groups.

    ``model`` is a :class:`headstart.sources.target.TargetModel`.  Frozen parameters get
    ``requires_grad=False`` and appear in no group.  Groups: ``backbone`` (trainable
    stages, at ``plan.backbone_lr``; with ``layer_decay`` < 1 the earlier stages get
    groups ``backbone@STAGE`` at decayed rates) and ``head`` (at ``plan.head_lr``); weight
    decay is not applied to biases and normalisation weights (1-d tensors).  A ``lora``
    plan first puts adapters into the backbone (:func:`headstart.plan.lora.add_adapters`);
    they, not the backbone's own weights, are its ``backbone`` group.
    """
    backbone = model.backbone
    frozen = set(_frozen_indices(model, plan))
    groups: list[dict[str, Any]] = []
    by_stage: dict[int, list[tuple[str, nn.Parameter]]] = {}
    if plan.lora is not None:
        add_adapters(backbone, plan.lora)
        for name, p in backbone.body.named_parameters():
            p.requires_grad_(is_adapter_parameter(name))
            if p.requires_grad:
                by_stage.setdefault(backbone.num_stages - 1, []).append((name, p))
    else:
        for name, p in backbone.body.named_parameters():
            stage = backbone.stage_of(name)
            trainable = stage not in frozen and plan.backbone_lr > 0
            p.requires_grad_(trainable)
            if trainable:
                by_stage.setdefault(stage, []).append((name, p))
    last = max(by_stage, default=0)
    sets: list[tuple[str, list[tuple[str, nn.Parameter]], float]] = []
    if plan.layer_decay == 1.0:
        sets.append(("backbone", [np for ps in by_stage.values() for np in ps], plan.backbone_lr))
    else:
        for stage in sorted(by_stage):
            gname = "backbone" if stage == last else f"backbone@{backbone.stage_names[stage]}"
            lr = plan.backbone_lr * plan.layer_decay ** (last - stage)
            sets.append((gname, by_stage[stage], lr))
    sets.append(("head", list(model.head.named_parameters()), plan.head_lr))
    for gname, params, lr in sets:
        decay = [p for _, p in params if p.ndim > 1]
        no_decay = [p for _, p in params if p.ndim <= 1]
        for suffix, ps, wd in (("", decay, plan.weight_decay), ("_no_decay", no_decay, 0.0)):
            if ps:
                groups.append({"name": gname + suffix, "params": ps, "lr": lr, "weight_decay": wd})
    for _, p in model.head.named_parameters():
        p.requires_grad_(True)
    return groups


def set_train_mode(model: Any, plan: Plan, training: bool = True) -> None:
    """``model.train(training)``, but frozen stages always stay in eval mode."""
    model.train(training)
    # LoRA trains as the model does (dropout on); its frozen weights cannot move anyway
    if training and plan.bn_mode is BatchNorm.FROZEN_EVAL:
        frozen = _frozen_indices(model, plan)
        if len(frozen) == model.backbone.num_stages:
            model.backbone.eval()
            return
        for module in model.backbone.stage_modules(frozen):
            module.eval()
