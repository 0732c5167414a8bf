"""``DenseGRPOTrainer``: TRL's GRPO with per-token advantages from dense (per-token) rewards.

TRL 1.16 has no dense-reward API, but its GRPO loss accepts ``(B, T)`` advantages from subclasses (it only
unsqueezes 1-D ones), and the maintainers' advice for custom advantages is to override
``_generate_and_score_completions`` and replace ``advantages`` (huggingface/trl#4525). That is all this class
does, without copying TRL code:

1. the scalar ``reward_funcs`` run exactly as in ``GRPOTrainer`` (group normalisation, ``reward_weights``,
   ``rewards/<name>/mean`` are untouched);
2. the ``dense_rewards`` are called right after them, from a thin ``_calculate_rewards`` override, with the
   very arguments TRL gives the scalar ones (so their ``log_metric``/``log_extra`` calls are flushed by TRL in
   the same step); each returns :class:`~guard_reward.types.DenseRewards` aligned to ``completion_ids``;
3. after ``super()._generate_and_score_completions``, ``advantages`` ``(B,)`` becomes
   ``A_t = A_seq + dense_coef · f(d)_t`` ``(B, T)``, 0 on padding and tool tokens
   (:func:`guard_reward.shaping.dense.dense_advantages`); the completions table's ``advantage`` column then
   shows each completion's mean of them over its policy tokens
   (:func:`~guard_reward.integrations.trl.batch.show_loss_advantages`), not TRL's sequence advantage the loss
   no longer uses.

With ``tools=`` (or a ``rollout_func`` returning ``env_mask``) a completion interleaves the policy's turns with
tool results, and TRL passes the reward functions the whole of it as ``completion_ids`` but not its
``tool_mask``. This class keeps the mask ``_generate`` returns and hands it to every reward function, dense
reward and cost of the batch as a ``tool_mask`` column (one 0/1 list per completion, 0 = tool token), so
``TokenSafetyPenalty`` scores the policy's own tokens only.

The dense term is added after group normalisation, so ``dense_coef`` is relative to unit-std sequence
advantages. Losses that turn the advantage into a sequence-level quantity cannot use per-token credit and are
refused: ``importance_sampling_level="sequence"`` (GSPO: one ratio per sequence), ``luspo`` (sequence-level by
design) and ``vespo`` (its gamma weights are chosen by the sign of the sequence's advantage).

A row gets no dense term when it has no signal: every scalar reward returned ``None`` for it (TRL gives it
advantage 0, and so does this class, on every token), or its dense mask is False on every token (the dense
reward could not judge it). Such rows are also left out of ``process_supervision``'s group statistics.
Non-finite dense rewards where the mask is True are an error naming the reward.

With several processes only ``process_supervision`` needs other processes' rows (its group statistics), so only
that mode gathers; ``token`` and ``return_to_go`` are computed on the local rows. ``off_policy_mask_threshold``
works per token (:func:`per_token_off_policy_mask`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from trl import GRPOTrainer

from guard_reward.shaping.dense import check_coef, check_dense_advantage, dense_advantages
from guard_reward.shaping.normalize import row_mean
from guard_reward.types import DenseRewards

from .batch import (
    add_tool_mask_column,
    bind_policy_tokenizer,
    check_dense_rewards,
    check_distinct_names,
    local_rows,
    on_completion_grid,
    policy_token_mask,
    reward_kwargs,
    score_dense,
    show_loss_advantages,
)

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


def per_token_off_policy_mask(
    advantages: torch.Tensor,
    per_token_logps: torch.Tensor,
    sampling_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    off_policy_threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy mask, per token: keep token ``t`` when ``A_t >= 0`` or when its sequence's
    mean ``log pi_sampling - log pi_current`` over real tokens is at most ``off_policy_threshold``.

    With one advantage per sequence this is TRL's sequence mask; with per-token advantages a sequence that
    drifted too far loses only its negatively credited tokens (e.g. the one that made it unsafe), the rest of
    it still trains.

    Args:
        advantages: ``(B, T)``, or ``(B, 1)`` for one advantage per sequence.
        per_token_logps, sampling_per_token_logps: ``(B, T)`` current and sampling-time log-probabilities.
        mask: ``(B, T)`` 1 on real completion tokens.
        off_policy_threshold: the KL bound.

    Returns:
        ``(B, T)`` in ``mask``'s dtype, 1 = keep.
    """
    # Tokens the sampler could not score (NaN) carry no KL evidence, as in TRL.
    kl = torch.nan_to_num(sampling_per_token_logps - per_token_logps.detach(), nan=0.0)
    mean_kl = row_mean(kl, mask).unsqueeze(1)
    keep = (advantages >= 0) | (mean_kl <= off_policy_threshold)
    return keep.expand_as(mask).to(dtype=mask.dtype)


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

    # TRL calls self.get_off_policy_mask(...); ours keeps the (B, T) shape of per-token advantages on purpose.
    get_off_policy_mask = staticmethod(per_token_off_policy_mask)

    def __init__(
        self,
        *args: Any,
        dense_rewards: Sequence[Callable[..., DenseRewards]] | Callable[..., DenseRewards] = (),
        dense_coef: float = 0.1,
        dense_advantage: str = "token",
        **kwargs: Any,
    ) -> None:
        dense = check_dense_rewards(dense_rewards)
        coef = check_coef("dense_coef", dense_coef)
        check_dense_advantage(dense_advantage)
        args_ = kwargs.get("args", args[2] if len(args) > 2 else None)
        if args_ is not None:
            check_dense_loss(args_)  # before TRL loads models: a refused config costs nothing
        super().__init__(*args, **kwargs)
        check_dense_loss(self.args)
        check_distinct_names(self.reward_func_names)
        self.dense_rewards = dense
        self.dense_coef = coef
        self.dense_advantage = dense_advantage
        self._pending_dense: DenseRewards | None = None
        self._pending_scalar: torch.Tensor | None = None
        self._pending_tool_mask: list[list[int]] | None = None
        self._warned_no_signal = False
        bind_policy_tokenizer(self, [*dense, *self.reward_funcs])

    # -- step 2: dense rewards next to the scalar ones
    # --------------------------------------------------------
    def _generate(self, prompts):
        result = super()._generate(prompts)
        # TRL 1.16 returns (prompt_ids, completion_ids, tool_mask, ...): tool_mask is None without tools
        self._pending_tool_mask = result[2]
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        tool_mask, self._pending_tool_mask = self._pending_tool_mask, None
        add_tool_mask_column(inputs, tool_mask)
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._pending_scalar = rewards_per_func  # (N, F) over all processes; NaN = the reward returned None
        if self.dense_rewards:
            kwargs = reward_kwargs(self, inputs)
            self._pending_dense = score_dense(
                self.dense_rewards, prompts, completions, completion_ids_list, kwargs
            )
        return rewards_per_func

    # -- step 3: per-token advantages
    # ---------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._pending_dense, self._pending_scalar = None, None
        out = super()._generate_and_score_completions(inputs)
        if not self.dense_rewards:
            return out
        dense, self._pending_dense = self._pending_dense, None
        scalar, self._pending_scalar = self._pending_scalar, None
        if dense is None or scalar is None:
            raise RuntimeError(
                "the dense rewards were not computed for this batch (_calculate_rewards not called)"
            )
        seq = out["advantages"]
        device = seq.device
        mode = "train" if self.model.training else "eval"
        b, t = out["completion_ids"].shape
        mask = policy_token_mask(out)
        d = on_completion_grid(dense.rewards, t, device)
        dmask = on_completion_grid(dense.mask, t, device)
        # A row without signal (no scalar reward, or no token the dense rewards could judge) keeps TRL's
        # advantage alone: 0 for an unscorable row, A_seq for a row only the dense reward failed on.
        unscorable = torch.isnan(scalar[local_rows(self, b)]).all(dim=1).to(device)
        has_signal = (mask & dmask).any(dim=1) & ~unscorable
        dense_mask = mask & has_signal.unsqueeze(1)
        d = torch.where(dense_mask & dmask, d, torch.zeros_like(d))
        group = self.num_generations if mode == "train" else self.num_generations_eval
        adv = self._dense_advantages(seq, d, dense_mask, group)
        out["advantages"] = torch.where(dense_mask, adv, seq.to(adv.dtype).unsqueeze(1)) * mask
        self._log_dense(mode, d, dense_mask, has_signal)
        show_loss_advantages(self, out)
        return out

    def _log_dense(
        self, mode: str, d: torch.Tensor, dense_mask: torch.Tensor, has_signal: torch.Tensor
    ) -> None:
        """Global ``dense/reward_mean`` (per scored token), ``dense/sum_mean`` (per row with signal) and
        ``dense/no_signal_frac`` (rows that got no dense term)."""
        local = torch.stack(
            [
                d.sum(),
                dense_mask.sum().float(),
                has_signal.sum().float(),
                d.new_tensor(float(has_signal.numel())),
            ]
        ).float()
        totals = self.accelerator.gather(local).view(-1, 4).sum(dim=0)
        self._metrics[mode]["dense/reward_mean"].append((totals[0] / totals[1].clamp(min=1)).item())
        self._metrics[mode]["dense/sum_mean"].append((totals[0] / totals[2].clamp(min=1)).item())
        no_signal = int(totals[3] - totals[2])
        self._metrics[mode]["dense/no_signal_frac"].append(no_signal / max(float(totals[3]), 1.0))
        if no_signal and not self._warned_no_signal:
            self._warned_no_signal = True
            logger.warning(
                "%d of %d completions got no dense term (every scalar reward returned None, or the dense "
                "rewards masked every token); counted in dense/no_signal_frac, further batches not logged",
                no_signal,
                int(totals[3]),
            )

    def _dense_advantages(
        self, seq: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, group: int
    ) -> torch.Tensor:
        """Per-token advantages ``(B, T)`` for the local rows from ``seq`` ``(B,)``, ``d`` and ``mask``
        ``(B, T)``.

        Only ``process_supervision`` needs other processes' rows (a group may span processes); it gathers
        ``d`` and ``mask`` padded to the widest process's ``T`` with explicit, equal dtypes (every process
        must send the same shape and dtype), computes on the whole batch and slices the local rows back.
        """
        kwargs = dict(coef=self.dense_coef, mode=self.dense_advantage, group_size=group)
        if self.dense_advantage != "process_supervision" or self.accelerator.num_processes == 1:
            return dense_advantages(seq, d, mask, **kwargs)
        b, t = d.shape
        widths = self.accelerator.gather(torch.tensor([t], dtype=torch.int64, device=d.device))
        width = int(widths.max())
        d_pad = torch.zeros(b, width, dtype=torch.float32, device=d.device)
        d_pad[:, :t] = d.float()
        m_pad = torch.zeros(b, width, dtype=torch.float32, device=d.device)
        m_pad[:, :t] = mask.float()
        d_all = self.accelerator.gather(d_pad)
        m_all = self.accelerator.gather(m_pad) > 0.5
        seq_all = self.accelerator.gather(seq.float().contiguous())
        adv = dense_advantages(seq_all, d_all, m_all, **kwargs)
        return adv[local_rows(self, b), :t].to(d.dtype)
