"""A tiny Qwen3 policy that calls a tool, for GRPO runs through TRL's own tool loop (``tools=``).

The policy is the random tiny Qwen3 of :mod:`tests.tiny_policy` with the real Qwen3 chat template (TRL knows
how to parse its ``<tool_call>`` blocks). Its sampling is biased (``sequence_bias``, as the multi-process tier
does) so that after the user's question it usually writes a whole ``lookup`` tool call, with a benign or a
harmful topic about equally often, and after the tool's answer a short final answer; every token of these
strings is likely, not certain, so some completions stray into random tokens and call no tool, and the batch
holds tool-call turns, tool results and final answers side by side.
"""

from __future__ import annotations

from typing import Any

IM_END, NEWLINE, IM_START, ASSISTANT = 151645, 198, 151644, 77091
TOOL_RESPONSE_CLOSE = 151666
QUESTION_MARK = 30
#: The topics the policy asks the tool about: benign, or holding one of the sandbox's unsafe words. Words of the
#: sandbox language between spaces, so its word-level guards read ` brastik` inside the JSON arguments.
BENIGN_TOPIC, HARMFUL_TOPIC = "the bright lamp", "the brastik lamp"
BIAS = 16.0  # on ~0 logits over 151,936 ids: each biased token has p ~ 0.98
PROMPTS = ["Where is the bread?", "What is next to the oven?", "Where can I find a cozy sail?"]


def lookup(topic: str) -> str:
    """Look a topic up in the house notes.

    Args:
        topic: The topic to look up.
    """
    return f"The {topic} is next to the oven."


def tool_call_text(topic: str) -> str:
    return f'<tool_call>\n{{"name": "lookup", "arguments": {{"topic": "{topic}"}}}}\n</tool_call>'


def _chain(context: list[int], ids: list[int], bias: float) -> list[list[Any]]:
    """Biases making ``ids`` likely after ``context``: each token given the context and every token before it."""
    return [[[*context, *ids[: k + 1]], bias] for k in range(len(ids))]


def sequence_bias(tokenizer: Any) -> list[list[Any]]:
    """The ``generation_kwargs["sequence_bias"]`` that makes the tiny random policy call the tool and answer.

    After ``?<|im_end|>\\n<|im_start|>assistant\\n`` (a question just asked): a tool call, its topic benign or
    harmful with equal bias; after ``</tool_response><|im_end|>\\n<|im_start|>assistant\\n``: an answer; then the
    end of the turn.
    """
    header = [IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE]
    out: list[list[Any]] = []
    for topic in (BENIGN_TOPIC, HARMFUL_TOPIC):
        call = [*tokenizer.encode(tool_call_text(topic)), IM_END]
        out += _chain([QUESTION_MARK, *header], call, BIAS)
    answer = [*tokenizer.encode("It is next to the oven."), IM_END]
    out += _chain([TOOL_RESPONSE_CLOSE, *header], answer, BIAS)
    unique: dict[tuple[int, ...], float] = {}
    for ids, bias in out:  # the two calls share their first tokens: one entry each
        unique[tuple(ids)] = bias
    return [[list(k), v] for k, v in unique.items()]


def tool_policy_tokenizer() -> Any:
    """The Qwen3 tokenizer with Qwen3's own chat template (tools and all), which TRL can parse tool calls of."""
    from trl.chat_template_utils import qwen3_chat_template

    from guard_reward.tiny.tokenizer import qwen_tokenizer

    return qwen_tokenizer(qwen3_chat_template)


def tool_policy(seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the tiny random Qwen3 of :mod:`tests.tiny_policy` and :func:`tool_policy_tokenizer`."""
    from tests.tiny_policy import tiny_policy

    model, _ = tiny_policy(seed)
    return model, tool_policy_tokenizer()


def tool_dataset(n_repeat: int = 1):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS] * n_repeat})
