"""Named prompt sets (config `prompts:`): `pet`, the PET-style defaults of `tasks.py`, and `lm-eval`,
lm-evaluation-harness 0.4's zero-shot templates written in kdflow's pattern syntax.

lm-eval scores ``context + target_delimiter + choice`` (the delimiter is one space) by the summed
log-probability of the choice's tokens. A kdflow pattern writes the same string with ``{mask}`` where the
choice goes: the text before ``{mask}``, trailing whitespace removed, is the context, and that whitespace
is prepended to the choice, as lm-eval moves a context's trailing spaces into the continuation. Each entry
names the lm-eval task file it reproduces (``lm_eval/tasks/...``, lm-eval 0.4.13).
"""

from __future__ import annotations

from .tasks import TASKS, Prompt

_NO_YES = {"0": "no", "1": "yes"}
_NO_YES_BOOL = {"false": "no", "true": "yes"}
_TRUE_FALSE = {"entailment": "True", "not_entailment": "False"}

LM_EVAL: dict[str, Prompt] = {
    # glue/sst2/default.yaml: choices ["negative", "positive"] for labels 0, 1
    "sst2": Prompt(
        "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer: {mask}",
        {"0": "negative", "1": "positive"},
    ),
    # glue/rte/default.yaml: choices ["True", "False"] for labels 0 (entailment), 1 (not_entailment)
    "rte": Prompt("{sentence1}\nQuestion: {sentence2} True or False?\nAnswer: {mask}", _TRUE_FALSE),
    # glue/mrpc/default.yaml: choices ["no", "yes"]
    "mrpc": Prompt(
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both sentences mean the same "
        "thing?\nAnswer: {mask}",
        _NO_YES,
    ),
    # glue/cola/default.yaml: choices ["no", "yes"]
    "cola": Prompt("{sentence}\nQuestion: Does this sentence make sense?\nAnswer: {mask}", _NO_YES),
    # super_glue/boolq/default.yaml: choices ["no", "yes"]
    "boolq": Prompt("{passage}\nQuestion: {question}?\nAnswer: {mask}", _NO_YES_BOOL),
    # super_glue/cb/default.yaml: choices ['True', 'False', 'Neither'] for entailment, contradiction, neutral
    "cb": Prompt(
        "{premise}\nQuestion: {hypothesis}. True, False, or Neither?\nAnswer: {mask}",
        {"entailment": "True", "contradiction": "False", "neutral": "Neither"},
    ),
    # super_glue/copa/utils.py: context premise.strip()[:-1] + " because"/" therefore"; each choice is
    # " " + the choice with its first letter lower-cased, after the one-space delimiter: two spaces
    "copa": Prompt("{premise|strip[:-1]} {question|cause=because,effect=therefore}  {mask|lower_first}"),
    # super_glue/rte/default.yaml (task sglue_rte): choices ['True', 'False']
    "rte_sg": Prompt("{premise}\nQuestion: {hypothesis} True or False?\nAnswer: {mask}", _TRUE_FALSE),
    # super_glue/wic/default.yaml: the word as it is written in sentence 1 (its character span)
    "wic": Prompt(
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word '{sentence1[start1:end1]}' "
        "used in the same way in the two sentences above?\nAnswer: {mask}",
        _NO_YES_BOOL,
    ),
}

PROMPT_SETS: dict[str, dict[str, Prompt]] = {
    "pet": {name: task.prompt for name, task in TASKS.items()},
    "lm-eval": LM_EVAL,
}
