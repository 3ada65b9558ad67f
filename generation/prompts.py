"""The three Self-Instruct prompts, in our own words, with the structure of the paper's.

1. instruction generation: a numbered list of 8 in-context tasks, then "9." so the
   model continues the list;
2. classification identification: a few yes/no examples, then the new task;
3. instance generation: input-first examples for ordinary tasks, output-first (class
   label, then input) for classification tasks.

The few-shot examples below were written for this project. Decoding settings follow
the Self-Instruct code (Wang et al., 2023): temperature 0.7, top-p 0.5, presence
penalty 2 and stop sequences that end the list for instructions; greedy decoding for
the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from instructmining.generation.backends.base import SamplingParams

# the list stops at a blank line or before item 16, as in the paper's code
INSTRUCTION_PARAMS = SamplingParams(
    max_tokens=1024,
    temperature=0.7,
    top_p=0.5,
    presence_penalty=2.0,
    stop=("\n\n", "\n16", "16.", "16 ."),
)
CLASSIFY_PARAMS = SamplingParams(max_tokens=3, temperature=0.0, top_p=0.0, stop=("\n", "Task"))


def instance_params(classification: bool, max_instances: int = 5) -> SamplingParams:
    """Greedy decoding that stops after `max_instances` examples or at the next task."""
    return SamplingParams(
        # the output-first prompt is longer, so it leaves less room, as in the paper
        max_tokens=300 if classification else 350,
        temperature=0.0,
        top_p=0.0,
        presence_penalty=1.5,
        stop=(f"Example {max_instances + 1}", "Task:"),
    )


_INSTRUCTION_HEAD = (
    "Below is a numbered list of varied tasks that an assistant could be asked to do. "
    "Add more tasks to the list, each different from the ones before.\n"
)
_CLASSIFICATION_HEAD = (
    "Below is a numbered list of classification tasks. Where it helps, a task names "
    "the labels its answer can take. Add more classification tasks to the list.\n"
)


def instruction_prompt(instructions: Sequence[str], *, classification: bool = False) -> str:
    """A numbered list of the in-context instructions ending in the next number."""
    lines = [_CLASSIFICATION_HEAD if classification else _INSTRUCTION_HEAD]
    for i, text in enumerate(instructions, start=1):
        # one line per item, and no trailing colon that would invite an input on the next line
        flat = re.sub(r"\s+", " ", text).strip().rstrip(":")
        lines.append(f"{i}. {flat}\n")
    lines.append(f"{len(instructions) + 1}.")
    return "".join(lines)


_CLASSIFY_HEAD = (
    "For each task, say whether it is a classification task: one whose answer is "
    "chosen from a small, fixed set of labels.\n\n"
)
_CLASSIFY_SHOTS: tuple[tuple[str, bool], ...] = (
    ("Tell whether the review below praises or criticises the restaurant.", True),
    ("Suggest three names for a bakery that sells only bread made with rye.", False),
    ("Is the following number prime? Answer true or false.", True),
    ("Rewrite the paragraph so that a ten-year-old could follow it.", False),
    ("Which of these animals is a mammal: trout, bat, or sparrow?", True),
    ("Explain why the sky looks red at sunset.", False),
    ("Label the e-mail as spam, promotion, or personal.", True),
    ("Give the past tense of each verb in the list.", False),
    ("Decide if the two sentences mean the same thing.", True),
    ("Plan a three-day trip to a city you choose, with one museum per day.", False),
)


def classify_prompt(instruction: str) -> str:
    """Few-shot yes/no prompt asking whether `instruction` is a classification task."""
    parts = [_CLASSIFY_HEAD]
    for text, is_clf in _CLASSIFY_SHOTS:
        parts.append(f"Task: {text}\nClassification: {'Yes' if is_clf else 'No'}\n\n")
    parts.append(f"Task: {instruction.strip()}\nClassification:")
    return "".join(parts)


def parse_yes_no(text: str) -> bool:
    """True when the answer to the classification question starts with yes."""
    return text.strip().lower().startswith("yes")


_INPUT_FIRST_HEAD = (
    "Write examples for each task below. Give several examples when you can. A task "
    "that needs no input gets its output directly.\n\n"
)
_INPUT_FIRST_SHOTS = (
    "Task: Convert a temperature from Celsius to Fahrenheit.\n"
    "Example 1\nInput: 25 degrees Celsius\nOutput: 77 degrees Fahrenheit\n"
    "Example 2\nInput: -10 degrees Celsius\nOutput: 14 degrees Fahrenheit\n\n"
    "Task: Suggest a title for a short story about a lighthouse keeper who befriends a seal.\n"
    "Output: The Keeper and the Grey Visitor\n\n"
    "Task: Shorten the sentence without changing its meaning.\n"
    "Example 1\nInput: In spite of the fact that it was raining, we went out for a walk.\n"
    "Output: Although it was raining, we went for a walk.\n"
    "Example 2\nInput: The meeting has been moved to a later date that has not been decided yet.\n"
    "Output: The meeting has been postponed indefinitely.\n\n"
    "Task: List four vegetables that grow well in a cool climate.\n"
    "Output: Cabbage, kale, carrots and peas.\n\n"
)
_OUTPUT_FIRST_HEAD = (
    "Each task below is a classification task. For each possible class label, write "
    "the label first and then an input that belongs to it. A task that needs no input "
    "gets only the label.\n\n"
)
_OUTPUT_FIRST_SHOTS = (
    "Task: Decide whether the product review is positive or negative.\n"
    "Class label: Positive\nInput: The kettle boils fast and looks great on the counter.\n"
    "Class label: Negative\nInput: It stopped working after two weeks and support never replied.\n\n"
    "Task: Say whether the statement is a fact or an opinion.\n"
    "Class label: Fact\nInput: Water freezes at zero degrees Celsius at sea level.\n"
    "Class label: Opinion\nInput: Winter is the most pleasant season.\n\n"
    "Task: Which planet is the largest in the solar system: Mars, Jupiter or Venus?\n"
    "Class label: Jupiter\n\n"
    "Task: Classify the sentence as a question, a command or a statement.\n"
    "Class label: Question\nInput: Where did you leave the keys?\n"
    "Class label: Command\nInput: Close the window before you leave.\n"
    "Class label: Statement\nInput: The train was late again this morning.\n\n"
)


def instance_prompt(instruction: str, *, classification: bool) -> str:
    """Input-first prompt for ordinary tasks, output-first (label, then input) for classification."""
    if classification:
        return _OUTPUT_FIRST_HEAD + _OUTPUT_FIRST_SHOTS + f"Task: {instruction.strip()}\n"
    return _INPUT_FIRST_HEAD + _INPUT_FIRST_SHOTS + f"Task: {instruction.strip()}\n"
