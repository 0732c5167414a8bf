"""What every trainer here reads from and writes into TRL 1.16's generation batch, in one place.

* **Rewards TRL does not know.** TRL calls its scalar reward functions with the batch's dataset columns plus
  ``trainer_state``, ``log_extra`` and ``log_metric`` as keyword arguments; it has no dense rewards and no costs.
  :func:`reward_kwargs` builds those same arguments, so dense rewards and costs log into the same step, and
  :func:`score_dense` calls the dense rewards, checks what they return and sums them. :func:`check_dense_rewards`,
  :func:`check_distinct_names` and :func:`bind_policy_tokenizer` are the construction-time checks and set-up
  that DenseGRPOTrainer, GuardPPOTrainer and the constrained trainers share.
* **The batch's layout.** Each process holds its own rows of a generation batch whose rewards TRL gathers over
  all processes (:func:`local_rows`); dense rewards are as wide as the longest completion they saw and are placed
  on the completions' padded token grid (:func:`on_completion_grid`); the tokens the policy is trained on exclude
  tool results (:func:`policy_token_mask`).
* **The completions table.** TRL fills it with its own sequence advantages; :func:`show_loss_advantages` puts
  there the advantages the loss actually uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from trl.trainer.utils import is_async_callable

from guard_reward.shaping.normalize import row_mean
from guard_reward.types import DenseRewards

#: Columns of TRL's inputs that reward functions receive as positional-like arguments, not as dataset columns.
_NOT_COLUMNS = ("prompt", "completion", "completion_ids")


def reward_name(func: Any) -> str:
    """The name a reward function's metrics go by: its ``__name__``, else its class name."""
    return str(getattr(func, "__name__", type(func).__name__))


def add_tool_mask_column(inputs: Sequence[dict[str, Any]], tool_mask: Sequence[Sequence[int]] | None) -> None:
    """Hand TRL's ``tool_mask`` (one 0/1 list per completion, 0 = a tool's token, as ``GRPOTrainer._generate``
    returns it; ``None`` without tools) to every reward function, dense reward and cost of the batch: each
    example of ``inputs`` gets a ``tool_mask`` column, which TRL passes on like a dataset column."""
    if tool_mask is None:
        return
    if len(tool_mask) != len(inputs):
        raise RuntimeError(f"tool_mask has {len(tool_mask)} rows for {len(inputs)} completions")
    for example, row in zip(inputs, tool_mask, strict=True):
        example["tool_mask"] = list(row)


def reward_kwargs(trainer: Any, inputs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The keyword arguments TRL's ``GRPOTrainer`` passes its reward functions: every dataset column as a list
    over ``inputs``, plus ``trainer_state``, ``log_extra`` and ``log_metric``."""
    keys = [k for k in inputs[0] if k not in _NOT_COLUMNS]
    kwargs: dict[str, Any] = {k: [example[k] for example in inputs] for k in keys}
    kwargs.update(
        trainer_state=trainer.state, log_extra=trainer._log_completion_extra, log_metric=trainer._log_metric
    )
    return kwargs


def check_dense_rewards(dense_rewards: Any) -> list[Callable[..., DenseRewards]]:
    """The dense rewards as a list, refusing what cannot work: a non-callable, an async callable, one whose
    signature takes no ``completion_ids`` (dense rewards are aligned to them), or two with one ``__name__``."""
    if dense_rewards is None:
        return []
    funcs = list(dense_rewards) if isinstance(dense_rewards, (list, tuple)) else [dense_rewards]
    for func in funcs:
        if not callable(func):
            raise TypeError(
                f"dense_rewards must be callables returning DenseRewards, got {type(func).__name__}"
            )
        if is_async_callable(func):
            raise TypeError(f"dense reward {reward_name(func)!r} is async; dense rewards must be synchronous")
        if not _takes_completion_ids(func):
            raise TypeError(
                f"dense reward {reward_name(func)!r} does not take completion_ids: dense rewards are called as "
                "func(prompts=..., completions=..., completion_ids=..., **kwargs) and return (B, T) rewards "
                "aligned to completion_ids; add a completion_ids (or **kwargs) parameter"
            )
    names = [reward_name(f) for f in funcs]
    if len(set(names)) != len(names):
        raise ValueError(f"dense rewards need distinct __name__s (their metrics use them), got {names}")
    return funcs


def _takes_completion_ids(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature (a C callable): cannot tell, accept it
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "completion_ids" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


def check_distinct_names(names: Sequence[str]) -> None:
    """Refuse scalar reward functions that share a name: TRL keys their metrics and table columns by name."""
    if len(set(names)) != len(names):
        raise ValueError(
            f"reward functions need distinct names, got {list(names)}: TRL would silently average their "
            "metrics and keep one completions-table column; pass name=... to the rewards"
        )


def bind_policy_tokenizer(trainer: Any, funcs: Iterable[Any]) -> None:
    """Give the policy's tokenizer to every function that has ``bind_tokenizer`` (a guard with another
    vocabulary aligns its tokens to the policy's through it); ``None`` entries are skipped."""
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    for func in funcs:
        bind = getattr(func, "bind_tokenizer", None)
        if callable(bind):
            bind(tokenizer)


def score_dense(
    funcs: Sequence[Callable[..., DenseRewards]],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids_list: Sequence[Sequence[int]],
    kwargs: dict[str, Any],
) -> DenseRewards:
    """Call every dense reward and sum them.

    Args:
        funcs: the dense rewards (see :func:`check_dense_rewards`).
        prompts, completions, completion_ids_list: this process's ``B`` rows, as TRL gives its reward functions.
        kwargs: :func:`reward_kwargs` of the same rows.

    Returns:
        ``DenseRewards``: ``(B, T)`` float32 summed rewards (0 where no reward's mask is True; ``T`` the longest
        completion) and ``(B, T)`` bool, the union of the masks. Positions a reward masks out are never read
        (a NaN there is ignored); a non-finite value where its mask is True is an error naming the reward.
    """
    b = len(prompts)
    t = max((len(ids) for ids in completion_ids_list), default=0)
    total = torch.zeros(b, t)
    mask = torch.zeros(b, t, dtype=torch.bool)
    for func in funcs:
        name = reward_name(func)
        out = func(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **kwargs)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"dense reward {name!r} must return DenseRewards(rewards, mask), got {type(out)}")
        rewards, m = (torch.as_tensor(x).cpu() for x in out)
        if rewards.shape != (b, t) or m.shape != (b, t):
            raise ValueError(
                f"dense reward {name!r} returned rewards {tuple(rewards.shape)} / mask {tuple(m.shape)}; "
                f"expected ({b}, {t}): one row per completion, T = the longest completion_ids"
            )
        m = m.bool()
        bad = m & ~torch.isfinite(rewards.float())
        if bool(bad.any()):
            rows = bad.any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"dense reward {name!r} returned non-finite values (NaN/inf) at {int(bad.sum())} "
                f"positions its mask marks as scored (rows {rows[:8]}); return finite rewards, and "
                "mask out (mask False) any token or row it cannot judge"
            )
        total += torch.where(m, rewards.float(), torch.zeros_like(total))
        mask |= m
    return DenseRewards(total, mask)


def on_completion_grid(
    x: torch.Tensor, width: int, device: torch.device | str, what: str = "dense rewards"
) -> torch.Tensor:
    """``x`` ``(B, T_x)`` placed on the completions' padded token grid: ``(B, width)`` on ``device``, zeros (False)
    after ``T_x``.

    Values past the completions would belong to no token: ``T_x > width`` is refused, naming ``what``.
    """
    if x.shape[1] > width:
        raise ValueError(f"{what} cover {x.shape[1]} tokens, the completions only {width}")
    out = torch.zeros(x.shape[0], width, dtype=x.dtype, device=device)
    out[:, : x.shape[1]] = x.to(device)
    return out


def local_rows(trainer: Any, batch: int) -> slice:
    """This process's rows in a tensor gathered over all processes, each of which holds ``batch`` rows."""
    start = trainer.accelerator.process_index * batch
    return slice(start, start + batch)


def policy_token_mask(out: dict[str, Any]) -> torch.Tensor:
    """``(B, T)`` bool: the completion tokens the policy produced (``completion_mask``, less the tool results
    of ``tool_mask`` when the batch has one)."""
    mask = out["completion_mask"].bool()
    if "tool_mask" in out:
        mask = mask & out["tool_mask"].bool()
    return mask


def show_loss_advantages(trainer: Any, out: dict[str, Any]) -> None:
    """Put the advantages the loss uses into TRL's completions table (rich print, parquet, wandb/trackio).

    TRL fills the table with its own group advantages ``(B_total,)`` before a subclass replaces
    ``out["advantages"]``; this overwrites the current generation batch's entries with ``out["advantages"]``
    gathered over all processes: as they are when ``(B,)``, and when ``(B, T)`` each completion's mean over its
    policy tokens (:func:`policy_token_mask`; 0 for a row without any). Every process must call it (it gathers).
    """
    adv = out["advantages"]
    if adv.dim() == 2:
        adv = row_mean(adv, policy_token_mask(out))
    shown = trainer.accelerator.gather(adv.float().contiguous()).tolist()
    table = trainer._logs["advantages"]  # a deque of the last generation batch's (TRL 1.16)
    for _ in range(min(len(table), len(shown))):
        table.pop()
    table.extend(shown)
