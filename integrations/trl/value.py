"""The critic of ``GuardPPOTrainer``: loading it, making it one replica on every process, reading per-token
values, saving and restoring it.

The critic is a **separate model** with a scalar head (by default ``AutoModelForTokenClassification`` with
``num_labels=1``, initialised from the policy's checkpoint, as in InstructGPT-style PPO and TRL's former
``PPOTrainer``), not a value head on the policy:

* it keeps its own optimiser and learning rate without parameter-group surgery on TRL's optimiser;
* GRPOTrainer's policy forward runs through TRL's fused LM head, which returns log-probabilities, not hidden
  states; a shared-trunk head would need that forward patched;
* the policy can be a PEFT adapter, or sharded by DeepSpeed/FSDP, without the critic caring.

The cost is a second backbone in memory; pass a smaller critic (``value_model=`` or
``GuardPPOConfig.value_model_name_or_path``) when that matters.

Accepted critics: any module that, like TRL 1.9-1.12's value models, has a ``base_model_prefix`` backbone
and a ``score`` head (``*ForSequenceClassification`` and ``*ForTokenClassification`` with one label), or any
module whose output ``.logits`` is ``(B, L, 1)``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

VALUE_SUBFOLDER = "value_model"
VALUE_OPTIMIZER_FILE = "value_optimizer.pt"


def load_value_model(path: str, **init_kwargs: Any) -> nn.Module:
    """Load a critic from a checkpoint path or hub id as ``AutoModelForTokenClassification(num_labels=1)``.

    A causal-LM checkpoint is accepted: its backbone is reused and the ``score`` head is newly initialised
    (transformers logs which weights were new).
    """
    from transformers import AutoModelForTokenClassification

    kwargs = {k: v for k, v in init_kwargs.items() if k not in ("device_map",)}
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return model


def check_value_model(model: nn.Module) -> None:
    """Raise a clear ``TypeError`` when ``model`` is not a usable critic (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"value_model must be an nn.Module or a checkpoint path, got {type(model).__name__}; accepted: a "
            "*ForTokenClassification / *ForSequenceClassification model with num_labels=1, or a module whose "
            "output .logits is (B, L, 1)"
        )
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear) and score.out_features != 1:
        raise TypeError(
            f"value_model.score must output one value per token, it has {score.out_features} outputs"
        )


def _backbone(model: nn.Module) -> nn.Module | None:
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and hasattr(model, "score") and isinstance(getattr(model, prefix, None), nn.Module):
        return getattr(model, prefix)
    return None


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Value of every position of ``input_ids``.

    Args:
        model: the critic (see :func:`check_value_model`).
        input_ids: ``(B, L)`` long, left-padded prompt followed by the right-padded completion.
        attention_mask: ``(B, L)`` 1 on real tokens.

    Returns:
        ``(B, L)`` float32; position ``j`` holds the value of the state after reading token ``j``.
    """
    module = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    backbone = _backbone(module)
    if backbone is not None:
        # Positions count real tokens only, so a left-padded prompt starts at 0 as it would unpadded.
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        out = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        values = module.score(hidden)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        values = getattr(out, "logits", out)
    if not isinstance(values, torch.Tensor) or values.dim() != 3 or values.shape[-1] != 1:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise TypeError(f"the value model must produce (B, L, 1) per-token values, got {shape}")
    return values[..., 0].float()


def completion_values(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Value of the state before each completion token.

    Args:
        prompt_ids, prompt_mask: ``(B, P)``, left-padded.
        completion_ids, completion_mask: ``(B, T)``, right-padded.

    Returns:
        ``(B, T)`` float32: ``V(prompt, completion[:t])`` at column ``t``, i.e. the critic's output at the
        position that precedes completion token ``t``.
    """
    p, t = prompt_ids.shape[1], completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    return token_values(model, input_ids, attention_mask)[:, p - 1 : p - 1 + t]


def rollout_values(model: nn.Module, batch: dict[str, Any], chunk: int, accelerator: Any) -> torch.Tensor:
    """The critic's values ``(B, T)`` (see :func:`completion_values`) of a whole generation batch, ``chunk`` rows
    at a time, under ``accelerator``'s autocast, without gradients and with the critic in eval mode (rollout
    values must not depend on dropout); its train/eval mode is restored afterwards.

    Args:
        batch: TRL's generation batch: ``prompt_ids``, ``prompt_mask`` ``(B, P)``, ``completion_ids``,
            ``completion_mask`` ``(B, T)``.
    """
    was_training = model.training
    model.eval()
    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    rows = batch["completion_ids"].shape[0]
    with torch.no_grad(), accelerator.autocast():
        values = torch.cat(
            [
                completion_values(model, *(batch[k][i : i + chunk] for k in keys))
                for i in range(0, rows, chunk)
            ]
        )
    model.train(was_training)
    return values


def broadcast_value_model(model: nn.Module, accelerator: Any) -> None:
    """Copy process 0's critic onto every process (a module passed in may differ by process too), so the critic
    is one replica everywhere."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32, torch.bool):
                tensor.copy_(broadcast(tensor.detach().contiguous().clone(), from_process=0))


def save_value_model(model: nn.Module | None, optimizer: torch.optim.Optimizer | None, folder: str) -> None:
    """Write the critic (``save_pretrained`` when available, else a state dict) and/or its optimiser state
    into ``folder/value_model/``."""
    target = os.path.join(folder, VALUE_SUBFOLDER)
    os.makedirs(target, exist_ok=True)
    if model is not None:
        module = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
        if hasattr(module, "save_pretrained"):
            module.save_pretrained(target)
        else:
            torch.save(module.state_dict(), os.path.join(target, "value_model.pt"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(target, VALUE_OPTIMIZER_FILE))


def load_value_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, checkpoint: str) -> bool:
    """Restore what :func:`save_value_model` wrote into ``checkpoint``; False when nothing is there."""
    folder = os.path.join(checkpoint, VALUE_SUBFOLDER)
    if not os.path.isdir(folder):
        logger.warning(
            "checkpoint %s has no %s/; the critic starts from its initial weights",
            checkpoint,
            VALUE_SUBFOLDER,
        )
        return False
    module = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    state_file = os.path.join(folder, "value_model.pt")
    if os.path.exists(state_file):
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        state = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors"):
                state.update(load_file(os.path.join(folder, name)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    # Tied weights are saved once; anything else missing is a real mismatch.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"critic checkpoint {folder} does not match the value model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    optimizer_file = os.path.join(folder, VALUE_OPTIMIZER_FILE)
    if optimizer is not None and os.path.exists(optimizer_file):
        optimizer.load_state_dict(torch.load(optimizer_file, map_location="cpu", weights_only=True))
    return True
