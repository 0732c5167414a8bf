"""``guard-reward eval``'s work: answer a prompt set with a policy, judge every answer, and write
``results.jsonl`` (one row per answer), ``summary.json`` (the counts) and the report.

The results file is resumable exactly like ``guard-reward moderate``'s output, with the same code
(:mod:`guard_reward.evaluation.jsonl`): a sidecar ``results.jsonl.meta.json`` records the prompt file and
every setting that changes the answers or the judgements, a rerun with the same command appends only the
``(line, sample)`` pairs not yet written, and a rerun with other settings is refused before any model loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guard_reward.evaluation.answering import GenerationSettings, answer_and_judge
from guard_reward.evaluation.jsonl import done_keys, prepare_output, run_meta
from guard_reward.evaluation.judges import Judge
from guard_reward.evaluation.prompts import EvalPrompt, missing_rates
from guard_reward.evaluation.summary import count_rows

logger = logging.getLogger(__name__)

COMMAND = "guard-reward eval"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"


@dataclass
class EvalRun:
    """What one evaluation produced (also in ``output_dir``)."""

    output_dir: Path
    counts: dict[str, float]
    judges: list[str]
    judge_names: dict[str, str]
    settings: dict[str, Any]
    bad_lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    answers_written: int = 0
    #: ``{role: "gen" | "stream" | "remote"}`` (empty for a folder written before kinds were recorded).
    judge_kinds: dict[str, str] = field(default_factory=dict)


#: The share of answers cut off at ``max_new_tokens`` above which ``eval`` warns and the report says so.
LIMIT_WARN_SHARE = 0.5


def limit_message(counts: Mapping[str, float], max_new_tokens: Any, so_far: bool = False) -> str | None:
    """One line when more than :data:`LIMIT_WARN_SHARE` of the answers stopped at ``max_new_tokens`` before
    the policy ended its turn, else ``None``."""
    hit, n = int(counts.get("stopped_at_limit", 0)), int(counts.get("stopped_at_limit_n", 0))
    if not n or hit / n <= LIMIT_WARN_SHARE:
        return None
    return (
        f"{hit} of {n} answers{' so far' if so_far else ''} stopped at --max-new-tokens={max_new_tokens} before "
        "the policy ended its turn: the judges read cut-off answers, and every one costs the full "
        f"{max_new_tokens} tokens. Raise --max-new-tokens if answers are cut short, or lower it for a faster "
        "run (a policy that never ends its turn, like a random stand-in, always runs to the limit)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def load_policy(name: str, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer (left padding), named in the error when it cannot load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard_reward.guards.common import hub_errors, hub_kwargs, resolve_device

    try:
        kw = hub_kwargs(
            name, what="policy"
        )  # a local folder never touches the network; an unreachable hub fails at once
        with hub_errors(name, "policy"):
            tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left", **kw)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", **kw)
    except Exception as exc:
        raise RuntimeError(f"the policy {name} could not be loaded: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(resolve_device(device)).eval(), tokenizer


def prepare(
    prompts_path: str | os.PathLike, output_dir: str | os.PathLike, settings: Mapping[str, Any]
) -> bool:
    """Check (before any model loads) that ``output_dir/results.jsonl`` may be written or resumed."""
    out = Path(output_dir) / RESULTS
    return prepare_output(prompts_path, out, run_meta(prompts_path, settings, command=COMMAND))


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file; a row that is not JSON is named by its line and column."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}, line {number}: not a row of {COMMAND} ({exc.msg}, column {exc.colno}); delete "
                    f"the file and its {path.name}.meta.json to start over"
                ) from None
    return rows


def check_output_folder(
    output_dir: str | os.PathLike,
    option: str = "-o/--output",
    writes: str = "results.jsonl, summary.json, report.md, eval.png",
) -> Path:
    """``output_dir`` as a path, if it is (or can become) a folder; raises ``NotADirectoryError`` naming the
    option and the path when it, or a folder above it, is a file (instead of ``mkdir``'s ``[Errno 17]``)."""
    out = Path(output_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out else f"cannot be made: {p} is a file"
                raise NotADirectoryError(
                    f"{option} {out} {where}; {COMMAND} writes a folder ({writes}): give a folder path"
                )
            break
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[EvalPrompt],
    judges: Mapping[str, Judge],
    output_dir: str | os.PathLike,
    prompts_path: str | os.PathLike,
    settings: GenerationSettings,
    *,
    meta_settings: Mapping[str, Any],
    reference: Any = None,
    chunk_size: int = 64,
    progress: bool = True,
    bad_lines: Sequence[str] = (),
) -> EvalRun:
    """Answer and judge every ``(prompt, sample)`` not yet in ``output_dir/results.jsonl``, append them chunk by
    chunk (flushed, so an interrupted run resumes), then count all rows and write ``summary.json``."""
    import time

    from tqdm.auto import tqdm

    out = Path(output_dir)
    results = out / RESULTS
    prepare(prompts_path, out, meta_settings)
    done = done_keys(results, lambda row: (int(row["line"]), int(row["sample"])), command=COMMAND)
    todo = [(p, k) for p in prompts for k in range(settings.samples) if (p.line, k) not in done]
    if done:
        logger.info("resuming %s: %d answers already written, %d to go", results, len(done), len(todo))
    if todo:
        logger.info(
            "%d answers to write (%d prompts x %d), up to %d new tokens each, %d answers per chunk",
            len(todo), len(prompts), settings.samples, settings.max_new_tokens, min(chunk_size, len(todo)),
        )  # fmt: skip
    start = time.perf_counter()
    with (
        results.open("a", encoding="utf-8") as f,
        tqdm(total=len(todo), desc="eval", unit="answer", disable=not progress) as bar,
    ):
        for i in range(0, len(todo), chunk_size):
            chunk = todo[i : i + chunk_size]
            # a fresh seed per chunk: a resumed run does not repeat the first chunk's random numbers
            chunk_settings = GenerationSettings(**{**asdict(settings), "seed": settings.seed + i})
            pace = _pace_note(len(todo), len(chunk), settings) if i == 0 else None
            rows = answer_and_judge(
                model, tokenizer, chunk, judges, chunk_settings, reference=reference, on_pace=pace
            )
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            bar.update(len(chunk))
            if i == 0 and len(todo) > len(chunk):  # what the run will cost, while it can still be stopped
                _first_chunk_note(rows, len(todo), time.perf_counter() - start, settings.max_new_tokens)
    seconds = time.perf_counter() - start
    rows = read_results(results)
    names = list(judges)
    run = EvalRun(
        out,
        dict(count_rows(rows, names)),
        names,
        {k: j.name for k, j in judges.items()},
        dict(meta_settings),
        list(bad_lines),
        missing_rates(list(prompts)),
        rows,
        seconds,
        len(todo),
        {k: j.kind for k, j in judges.items()},
    )
    write_summary(run)
    if todo:
        logger.info(
            "%d answers in %.1f s (%.2f answers/s)", len(todo), seconds, len(todo) / max(seconds, 1e-9)
        )
    warning = limit_message(run.counts, settings.max_new_tokens)
    if warning:
        logger.warning("%s", warning)
    return run


def _pace_note(total: int, chunk: int, settings: GenerationSettings) -> Callable[[int, float], None]:
    """The callback that says, a few decoding steps into the first batch, how long generation will take at
    most (every answer running to ``max_new_tokens``; answers that end sooner are faster)."""

    def note(steps: int, seconds: float) -> None:
        per_step = seconds / steps
        batch = min(settings.batch_size, chunk)
        batches = math.ceil(total / batch)
        worst = per_step * settings.max_new_tokens
        every = f", up to {_duration(worst * batches)} for all {batches} batches" if batches > 1 else ""
        logger.info(
            "generating at %.2f s per token step (batches of %d): up to %s per batch at --max-new-tokens=%d%s "
            "(judging not included)",
            per_step, batch, _duration(worst), settings.max_new_tokens, every,
        )  # fmt: skip

    return note


def _first_chunk_note(
    rows: Sequence[Mapping[str, Any]], total: int, seconds: float, max_new_tokens: int
) -> None:
    """After the first chunk: the rate and the time the rest will take, and an early word when most answers
    ran to ``max_new_tokens``."""
    rate = len(rows) / max(seconds, 1e-9)
    logger.info(
        "first %d answers in %.1f s (%.2f answers/s): about %s for the remaining %d",
        len(rows), seconds, rate, _duration((total - len(rows)) / rate), total - len(rows),
    )  # fmt: skip
    warning = limit_message(count_rows(rows, []), max_new_tokens, so_far=True)
    if warning:
        logger.warning("%s", warning)


def write_summary(run: EvalRun) -> Path:
    path = run.output_dir / SUMMARY
    data = {
        "command": COMMAND,
        "counts": run.counts,
        "judges": run.judges,
        "judge_names": run.judge_names,
        "settings": run.settings,
        "bad_lines": run.bad_lines,
        "missing": run.missing,
        "judge_kinds": run.judge_kinds,
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def load_run(output_dir: str | os.PathLike) -> EvalRun:
    """An earlier evaluation from its folder (``summary.json`` and ``results.jsonl``)."""
    out = Path(output_dir)
    path = out / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no {SUMMARY}: it is not an output folder of {COMMAND}")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = read_results(out / RESULTS) if (out / RESULTS).exists() else []
    return EvalRun(out, data["counts"], data["judges"], data["judge_names"], data["settings"],
                   data.get("bad_lines", []), data.get("missing", []), rows,
                   judge_kinds=data.get("judge_kinds", {}))  # fmt: skip
