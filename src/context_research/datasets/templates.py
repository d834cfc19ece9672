"""Prompt templates and per-task settings for LongBench and InfiniteBench.

The wording is our own, written in the spirit of LongBench's ``dataset2prompt`` and
InfiniteBench's prompts: instruction first, long context, then the question and a short
reminder of the answer format (so middle truncation keeps both ends). ``max_new_tokens``
follows each benchmark's published per-task generation lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

LONGBENCH_HUB_ID = "THUDM/LongBench"
INFINITEBENCH_HUB_ID = "xinrongzhang2022/InfiniteBench"
PG19_HUB_ID = "deepmind/pg19"


@dataclass(frozen=True)
class TaskSpec:
    template: str
    metric: str
    max_new_tokens: int


_QA_MULTIDOC = (
    "Answer the question using the passages below. Give only the answer, no other words.\n\n"
    "Passages:\n{context}\n\n"
    "Using the passages above, give only the answer, no other words.\n\nQuestion: {input}\nAnswer:"
)

LONGBENCH_TASKS: dict[str, TaskSpec] = {
    "narrativeqa": TaskSpec(
        "Read the story below (a novel or a film script) and answer the question about it.\n\n"
        "Story:\n{context}\n\n"
        "Answer the question as briefly as you can, with a single phrase if possible. Do not explain.\n\n"
        "Question: {input}\n\nAnswer:",
        "qa_f1_score", 128),
    "qasper": TaskSpec(
        "Read the scientific article below and answer the question about it.\n\nArticle:\n{context}\n\n"
        "Answer as briefly as you can, in a phrase or one sentence. If the article does not answer it, "
        'write "unanswerable". For a yes/no question, write "yes", "no" or "unanswerable". Do not explain.\n\n'
        "Question: {input}\n\nAnswer:",
        "qa_f1_score", 128),
    "multifieldqa_en": TaskSpec(
        "Read the text below and answer the question about it briefly.\n\n{context}\n\n"
        "Using only the text above, answer briefly and without explanation.\n\nQuestion: {input}\nAnswer:",
        "qa_f1_score", 64),
    "hotpotqa": TaskSpec(_QA_MULTIDOC, "qa_f1_score", 32),
    "2wikimqa": TaskSpec(_QA_MULTIDOC, "qa_f1_score", 32),
    "musique": TaskSpec(_QA_MULTIDOC, "qa_f1_score", 32),
    "gov_report": TaskSpec(
        "Below is a report by a government agency. Write a one-page summary of it.\n\nReport:\n{context}\n\n"
        "Now write a one-page summary of the report.\n\nSummary:",
        "rouge_score", 512),
    "qmsum": TaskSpec(
        "Below is a meeting transcript and a query about it. Answer the query in one or more sentences.\n\n"
        "Transcript:\n{context}\n\nAnswer the query in one or more sentences, using the transcript above.\n\n"
        "Query: {input}\nAnswer:",
        "rouge_score", 512),
    "multi_news": TaskSpec(
        "Below are several news articles. Write a one-page summary covering all of them.\n\nNews:\n{context}\n\n"
        "Now write a one-page summary of all the news above.\n\nSummary:",
        "rouge_score", 512),
    "trec": TaskSpec(
        "Decide the type of the last question. Labelled example questions come first.\n\n{context}\n{input}",
        "classification_score", 64),
    "triviaqa": TaskSpec(
        "Answer the question from the passage. Give only the answer, no other words. Worked examples come first.\n\n"
        "{context}\n\n{input}",
        "qa_f1_score", 32),
    "samsum": TaskSpec(
        "Summarize the dialogue in a few short sentences. Worked examples come first.\n\n{context}\n\n{input}",
        "rouge_score", 128),
    "passage_count": TaskSpec(
        "Below are several paragraphs; some may be exact duplicates of others. Read all of them and work out "
        "how many different paragraphs there are.\n\n{context}\n\n"
        "How many different paragraphs are there once duplicates are removed? Reply with the number only.\n\n"
        "Answer:",
        "count_score", 32),
    "passage_retrieval_en": TaskSpec(
        "Below are numbered paragraphs followed by an abstract. Say which paragraph the abstract was written "
        "from.\n\n{context}\n\nAbstract:\n{input}\n\n"
        'Reply with the paragraph label only, such as "Paragraph 1" or "Paragraph 2".\n\nAnswer:',
        "retrieval_score", 32),
    "lcc": TaskSpec(
        "Complete the code below. Reply with the next line of code only.\n\n{context}Next line of code:\n",
        "code_sim_score", 64),
    "repobench-p": TaskSpec(
        "Complete the code below. Reply with the next line of code only.\n\n{context}{input}Next line of code:\n",
        "code_sim_score", 64),
}

_LETTERS = "ABCD"


def _options_block(options: list[str]) -> str:
    return "\n".join(f"{_LETTERS[j]}. {o}" for j, o in enumerate(options[: len(_LETTERS)]))


INFINITEBENCH_TASKS: dict[str, TaskSpec] = {
    "passkey": TaskSpec(
        "A long stretch of irrelevant text below hides one important piece of information. Find it and "
        "remember it; you will be asked about it.\n\n{context}\n\n{input}",
        "passkey", 6),
    "number_string": TaskSpec(
        "A long stretch of irrelevant text below hides one important sequence of digits. Find it and "
        "remember it; you will be asked about it.\n\n{context}\n\n{input}",
        "number_string", 12),
    "kv_retrieval": TaskSpec(
        "Below is a JSON object. Find the value stored under the key named after it.\n\n{context}\n\n{input}",
        "kv_retrieval", 50),
    "longbook_choice_eng": TaskSpec(
        "Read the book below and answer the question about it.\n\n{context}\n\nQuestion: {input}\n\n"
        "Exactly one option is correct. Reply with its letter (A, B, C or D) only.\n\n{options}",
        "longbook_choice_eng", 40),
    "longbook_qa_eng": TaskSpec(
        "Read the book below and answer the question about it briefly.\n\n{context}\n\n"
        "Question: {input}\n\nAnswer briefly:",
        "longbook_qa_eng", 40),
    "math_find": TaskSpec(
        "Below is a long list of numbers. Answer the question about it with one number.\n\n{context}\n\n"
        "{input}\n\nReply with the number only:",
        "math_find", 3),
    "code_debug": TaskSpec(
        "Exactly one function in the code below contains a deliberate error. Find it.\n\n{context}\n\n"
        "Which function contains the deliberate error?\n\n{options}\n\n"
        "Reply with the letter of the correct option (A, B, C or D) only.",
        "code_debug", 5),
}


def render(spec: TaskSpec, context: str, question: str, options: list[str] | None = None) -> str:
    """Fill a template with plain ``str.replace`` (contexts may contain braces)."""
    text = spec.template
    text = text.replace("{options}", _options_block(list(options or [])))
    # question first, then context, so a "{context}" string inside the question is not expanded
    marker = "\x00CONTEXT\x00"
    text = text.replace("{context}", marker).replace("{input}", question)
    return text.replace(marker, context)
