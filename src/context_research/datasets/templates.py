"""Upstream prompt templates and per-task settings for LongBench and InfiniteBench.

The templates, generation lengths, metrics and chat-template use are the suites' own, read
from ``context_research/data/upstream_prompts.json`` (which names the upstream repository,
commit and file of each). Filling a template follows upstream: LongBench's
``dataset2prompt[task].format(**record)``; InfiniteBench's ``create_prompt`` for its chat-model
path (``gpt4_templates``: ``question``/``OPTION_A``.. fields, math_find's ``prefix``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError

LONGBENCH_HUB_ID = "THUDM/LongBench"
INFINITEBENCH_HUB_ID = "xinrongzhang2022/InfiniteBench"
PG19_HUB_ID = "deepmind/pg19"
UPSTREAM_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "upstream_prompts.json"


@dataclass(frozen=True)
class TaskSpec:
    template: str
    metric: str
    max_new_tokens: int
    chat_template: bool = True          # upstream wraps the prompt in the model's chat template
    system_prompt: str | None = None    # upstream's system message (InfiniteBench's chat path)
    truncation: str = "longbench"       # whose middle truncation: longbench or infinitebench
    stop_at_newline: bool = False       # upstream also stops at the newline token (LongBench samsum)


@lru_cache(maxsize=1)
def upstream_prompts() -> dict:
    return json.loads(UPSTREAM_PROMPTS.read_text(encoding="utf-8"))


def prompt_source(benchmark: str) -> dict:
    """Where a benchmark's templates come from (repository, commit, files): recorded in manifests."""
    return dict(upstream_prompts()[benchmark]["source"])


def _tasks(benchmark: str) -> dict[str, TaskSpec]:
    block = upstream_prompts()[benchmark]
    return {name: TaskSpec(t["prompt"], t["metric"], int(t["max_new_tokens"]), bool(t["chat_template"]),
                           block.get("system_prompt") if t["chat_template"] else None, block["truncation"],
                           bool(t.get("stop_at_newline", False)))
            for name, t in block["tasks"].items()}


LONGBENCH_TASKS: dict[str, TaskSpec] = _tasks("longbench")
INFINITEBENCH_TASKS: dict[str, TaskSpec] = _tasks("infinitebench")


def render_longbench(spec: TaskSpec, record: dict) -> str:
    """``prompt.format(**record)`` as LongBench's pred.py (contexts may hold braces: only the
    template is parsed)."""
    return spec.template.format(context=str(record["context"]), input=str(record.get("input") or ""))


def _math_find_prefix(question: str) -> str:
    # InfiniteBench create_prompt: "What is {the ... number} in the following list?"
    found = re.findall(r"The .+ of", question)
    if not found:
        raise ConfigError(f"infinitebench math_find: cannot find the target number ('The ... of') in {question!r}")
    return f"What is {found[0].lower()[:-3]} in the following list?"


def render_infinitebench(task: str, spec: TaskSpec, record: dict) -> str:
    """InfiniteBench's ``create_prompt`` for its chat-model templates."""
    question = str(record.get("input") or "")
    fields = {"context": str(record["context"]), "input": question, "question": question}
    if "{OPTION_A}" in spec.template:
        options = [str(o) for o in (record.get("options") or [])]
        if len(options) < 4:
            raise ConfigError(f"infinitebench {task}: record {record.get('id')!r} has {len(options)} options; "
                              f"the template names four (A-D)")
        fields.update(OPTION_A=options[0], OPTION_B=options[1], OPTION_C=options[2], OPTION_D=options[3])
    if "{prefix}" in spec.template:
        fields["prefix"] = _math_find_prefix(question)
    return spec.template.format(**fields)
