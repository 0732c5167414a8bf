"""``DenseGRPOTrainer``: TRL's GRPO with per-token advantages from dense (per-token) rewards.

TRL 1.16 has no dense-reward API, but its GRPO loss accepts ``(B, T)`` advantages from subclasses (it only
unsqueezes 1-D ones), and the maintainers' advice for custom advantages is to override
``_generate_and_score_completions`` and replace ``advantages`` (huggingface/trl#4525). That is all this class
does, without copying TRL code:

1. the scalar ``reward_funcs`` run exactly as in ``GRPOTrainer`` (group normalisation, ``reward_weights``,
   ``rewards/<name>/mean``, the completions table are untouched);
2. the ``dense_rewards`` are called right after them, from a thin ``_calculate_rewards`` override, with the
   very arguments TRL gives the scalar ones (so their ``log_metric``/``log_extra`` calls are flushed by TRL in
   the same step); each returns :class:`~guard_reward.types.DenseRewards` aligned to ``completion_ids``;
3. after ``super()._generate_and_score_completions``, ``advantages`` ``(B,)`` becomes
   ``A_t = A_seq + dense_coef · f(d)_t`` ``(B, T)``, 0 on padding and tool tokens
   (:func:`guard_reward.shaping.dense.dense_advantages`).

The dense term is added after group normalisation, so ``dense_coef`` is relative to unit-std sequence
advantages. Losses that turn the advantage into a sequence-level quantity cannot use per-token credit and are
refused: ``importance_sampling_level="sequence"`` (GSPO: one ratio per sequence), ``luspo`` (sequence-level by
design) and ``vespo`` (its gamma weights are chosen by the sign of the sequence's advantage).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from trl import GRPOTrainer

from guard_reward.shaping.dense import DENSE_ADVANTAGES, dense_advantages
from guard_reward.types import DenseRewards

logger = logging.getLogger(__name__)

#: GRPO loss types whose per-token terms take a ``(B, T)`` advantage as per-token credit.
TOKEN_LEVEL_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")


def check_dense_loss(args: Any) -> None:
    """Raise a clear error when a ``GRPOConfig`` cannot take per-token advantages."""
    loss_type = getattr(args, "loss_type", None)
    if loss_type not in TOKEN_LEVEL_LOSSES:
        raise ValueError(
            f"loss_type={loss_type!r} cannot take per-token advantages (it is sequence-level); dense rewards "
            f"need one of {', '.join(TOKEN_LEVEL_LOSSES)}, or fold the dense reward into a scalar"
        )
    if getattr(args, "importance_sampling_level", "token") != "token":
        raise ValueError(
            "importance_sampling_level='sequence' (GSPO) uses one ratio per sequence, so per-token "
            "advantages collapse into their sum; use importance_sampling_level='token' with dense rewards"
        )


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", type(func).__name__))


class DenseGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` plus dense rewards folded into per-token advantages.

    Args:
        *args, **kwargs: everything ``GRPOTrainer`` takes (``model``, ``reward_funcs``, ``args``, ...).
        dense_rewards: callables ``(prompts, completions, completion_ids, **kwargs) -> DenseRewards``, e.g.
            ``TokenSafetyPenalty``; their rewards are summed. One that has ``bind_tokenizer`` gets the
            policy's tokenizer (needed to align a guard with another vocabulary).
        dense_coef: weight of the dense term (``0`` reproduces plain GRPO exactly).
        dense_advantage: ``"token"``, ``"return_to_go"`` or ``"process_supervision"`` (see
            :mod:`guard_reward.shaping.dense`; the last one has a length bias).
    """

    def __init__(
        self,
        *args: Any,
        dense_rewards: Sequence[Callable[..., DenseRewards]] | Callable[..., DenseRewards] = (),
        dense_coef: float = 0.1,
        dense_advantage: str = "token",
        **kwargs: Any,
    ) -> None:
        dense = [dense_rewards] if callable(dense_rewards) else list(dense_rewards)
        for d in dense:
            if not callable(d):
                raise TypeError(
                    f"dense_rewards must be callables returning DenseRewards, got {type(d).__name__}"
                )
        if (
            isinstance(dense_coef, bool)
            or not isinstance(dense_coef, (int, float))
            or not math.isfinite(dense_coef)
        ):
            raise ValueError(f"dense_coef must be a finite number, got {dense_coef!r}")
        if dense_coef < 0:
            raise ValueError(
                f"dense_coef must be >= 0 (dense rewards carry their own sign), got {dense_coef}"
            )
        if dense_advantage not in DENSE_ADVANTAGES:
            raise ValueError(
                f"dense_advantage={dense_advantage!r} is not accepted; "
                f"use one of {', '.join(DENSE_ADVANTAGES)}"
            )
        names = [_name(d) for d in dense]
        if len(set(names)) != len(names):
            raise ValueError(f"dense rewards need distinct __name__s for their metrics, got {names}")
        super().__init__(*args, **kwargs)
        check_dense_loss(self.args)
        if len(set(self.reward_func_names)) != len(self.reward_func_names):
            raise ValueError(
                f"reward functions need distinct names, got {self.reward_func_names}: TRL would silently "
                "average their metrics and keep one completions-table column; pass name=... to the rewards"
            )
        self.dense_rewards = dense
        self.dense_coef = float(dense_coef)
        self.dense_advantage = dense_advantage
        self._dense_names = names
        self._pending_dense: DenseRewards | None = None
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        for d in [*dense, *self.reward_funcs]:
            bind = getattr(d, "bind_tokenizer", None)
            if callable(bind):
                bind(tokenizer)

    # -- step 2: dense rewards next to the scalar ones
    # --------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.dense_rewards:
            self._pending_dense = self._score_dense(inputs, prompts, completions, completion_ids_list)
        return rewards_per_func

    def _score_dense(self, inputs, prompts, completions, completion_ids_list) -> DenseRewards:
        keys = [k for k in inputs[0] if k not in ("prompt", "completion", "completion_ids")]
        kwargs: dict[str, Any] = {k: [example[k] for example in inputs] for k in keys}
        kwargs.update(
            trainer_state=self.state, log_extra=self._log_completion_extra, log_metric=self._log_metric
        )
        b = len(prompts)
        t = max((len(ids) for ids in completion_ids_list), default=0)
        total = torch.zeros(b, t)
        mask = torch.zeros(b, t, dtype=torch.bool)
        for func, name in zip(self.dense_rewards, self._dense_names, strict=True):
            out = func(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **kwargs)
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(
                    f"dense reward {name!r} must return DenseRewards(rewards, mask), got {type(out)}"
                )
            rewards, m = (torch.as_tensor(x).cpu() for x in out)
            if rewards.shape != (b, t) or m.shape != (b, t):
                raise ValueError(
                    f"dense reward {name!r} returned rewards {tuple(rewards.shape)} / mask {tuple(m.shape)}; "
                    f"expected ({b}, {t}): one row per completion, T = the longest completion_ids"
                )
            total += rewards.float() * m.bool()
            mask |= m.bool()
        return DenseRewards(total, mask)

    # -- step 3: per-token advantages
    # ---------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._pending_dense = None
        out = super()._generate_and_score_completions(inputs)
        if not self.dense_rewards:
            return out
        dense, self._pending_dense = self._pending_dense, None
        if dense is None:
            raise RuntimeError(
                "the dense rewards were not computed for this batch (_calculate_rewards not called)"
            )
        device = out["advantages"].device
        mode = "train" if self.model.training else "eval"
        b, t = out["completion_ids"].shape
        mask = out["completion_mask"].bool()
        if "tool_mask" in out:
            mask = mask & out["tool_mask"].bool()
        t_dense = dense.rewards.shape[1]
        if t_dense > t:
            raise ValueError(f"dense rewards cover {t_dense} tokens but the completions only {t}")
        d = torch.zeros(b, t, device=device)
        d[:, :t_dense] = dense.rewards.to(device)
        dmask = torch.zeros(b, t, dtype=torch.bool, device=device)
        dmask[:, :t_dense] = dense.mask.to(device)
        d = d * (mask & dmask)
        group = self.num_generations if mode == "train" else self.num_generations_eval
        out["advantages"] = self._dense_advantages(out["advantages"], d, mask, group)
        real = d[mask]
        gathered = self.accelerator.gather(
            torch.stack([real.sum(), real.new_tensor(real.numel()), d.sum(1).mean()])
        )
        totals = gathered.view(-1, 3)
        self._metrics[mode]["dense/reward_mean"].append(
            (totals[:, 0].sum() / totals[:, 1].sum().clamp(min=1)).item()
        )
        self._metrics[mode]["dense/sum_mean"].append(totals[:, 2].mean().item())
        return out

    def _dense_advantages(
        self, seq: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, group: int
    ) -> torch.Tensor:
        """Per-token advantages for the local rows. Group statistics (``process_supervision``) need every row
        of a group, which may sit on another process, so the batch is gathered first and the local rows sliced
        back."""
        if self.accelerator.num_processes == 1:
            return dense_advantages(
                seq, d, mask, coef=self.dense_coef, mode=self.dense_advantage, group_size=group
            )
        t = d.shape[1]
        d_all = self.accelerator.gather(self.accelerator.pad_across_processes(d, dim=1))
        m_all = self.accelerator.gather(self.accelerator.pad_across_processes(mask, dim=1))
        seq_all = self.accelerator.gather(seq)
        adv = dense_advantages(
            seq_all, d_all, m_all, coef=self.dense_coef, mode=self.dense_advantage, group_size=group
        )
        rows = slice(
            self.accelerator.process_index * d.shape[0], (self.accelerator.process_index + 1) * d.shape[0]
        )
        return adv[rows, :t]
