"""The rules published in the InstructMining paper, built in by name, and `load_rule`.

Both predict log evaluation loss from mean indicator values of a dataset. They
were fitted on the paper's base models and evaluation sets, so their absolute
values transfer only to that setting; the ranking they give is what selection
uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from instructmining.errors import InputError
from instructmining.regression.rule import Rule

REWARD_MODEL = "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
UNIEVAL_MODEL = "MingZhong/unieval-dialog"
#: the paper names "SentenceBERT" without a checkpoint; this is our assumption
KNN_MODEL = "sentence-transformers/all-mpnet-base-v2"  # as the paper profile's knn6

_PAPER = 'Cao et al., "Instruction Mining", arXiv:2307.06290'


def _no_range(features: str, datasets: str) -> str:
    """The ranges note of a published rule whose paper gives no fitted range."""
    return (
        f"Not stated: the paper does not report the fitted range of {features} (the spread "
        f"of its {datasets} candidate datasets' mean values), as far as the text available "
        "to us shows. No range is recorded rather than one guessed, so select cannot warn "
        "when a subset leaves it and --within-range cannot be used with this rule."
    )


class RuleNotFoundError(InputError, KeyError):
    """A rule name that is neither built in nor an existing file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _paper_v1() -> Rule:
    return Rule(
        name="paper-v1",
        intercept=1.0694,
        coefficients={"reward": -0.1498, "output_length": 8.257e-5, "knn6": -0.9350},
        target="eval_loss",
        target_transform="log",
        indicators={
            "reward": {"name": "reward", "model": REWARD_MODEL},
            "output_length": {"name": "output_length"},
            "knn6": {"name": "knn6", "k": 6, "model": KNN_MODEL},
        },
        provenance={
            "source": "published",
            "paper": "arXiv:2307.06290 (first version)",
            "base_model": "LLaMA-7B",
            "datasets": "78 finetuning datasets of 2,000 examples",
            "evaluation_set": "Self-Instruct's 252 user-oriented instructions and the 80 "
            "Vicuna questions, with reference responses",
        },
        notes=(
            "First version of the paper's rule, fitted on LLaMA-7B finetuned on 78 datasets of "
            "2,000 examples, evaluated on Self-Instruct's 252 user-oriented instructions plus "
            "the 80 Vicuna questions; its loss values transfer only to that setting. The paper "
            "names SentenceBERT for knn6 without the exact checkpoint; we assume "
            f"{KNN_MODEL}. output_length here counts whitespace words; the paper does not "
            "state the unit of its length indicator."
        ),
        citation=_PAPER + " (v1, 2023).",
        ranges_note=_no_range("reward, output_length or knn6", "78"),
    )


def _paper_v3() -> Rule:
    unieval = {"model": UNIEVAL_MODEL}
    return Rule(
        name="paper-v3",
        intercept=0.0274,
        coefficients={
            "reward": -0.0078,
            "understandability": 0.4421,
            "naturalness": -0.3212,
            "coherence": -0.1520,
        },
        target="eval_loss",
        target_transform="log",
        indicators={
            "reward": {"name": "reward", "model": REWARD_MODEL},
            "understandability": {"name": "understandability", **unieval},
            "naturalness": {"name": "naturalness", **unieval},
            "coherence": {"name": "coherence", **unieval},
        },
        provenance={
            "source": "published",
            "paper": "arXiv:2307.06290 v3 (COLM 2024)",
            "base_model": "LLaMA-2-7B",
            "datasets": "129 finetuning datasets of 1,000 examples",
            "evaluation_set": "Self-Instruct's 252 user-oriented instructions with reference "
            "responses",
        },
        notes=(
            "The paper's COLM 2024 rule, fitted on LLaMA-2-7B finetuned on 129 datasets of "
            "1,000 examples, evaluated on Self-Instruct's 252 user-oriented instructions; its "
            "loss values transfer only to that setting. UniEval scores are "
            "P(Yes)/(P(Yes)+P(No)) from the dialogue checkpoint."
        ),
        citation=_PAPER + " (v3, COLM 2024).",
        ranges_note=_no_range("reward, understandability, naturalness or coherence", "129"),
    )


#: rules this project fitted on its own committed studies, shipped as JSON (name = file stem);
#: each one's provenance names the study, and a test refits it from the study's table
SHIPPED_RULES = Path(__file__).resolve().parent / "rules"


def _shipped(path: Path) -> Callable[[], Rule]:
    return lambda: Rule.load(path)


#: built-in rule name -> function building it
BUILTIN_RULES: dict[str, Callable[[], Rule]] = {
    "paper-v1": _paper_v1,
    "paper-v3": _paper_v3,
    **{p.stem: _shipped(p) for p in sorted(SHIPPED_RULES.glob("*.json"))},
}


def builtin_rule(name: str) -> Rule:
    """The built-in rule `name`; KeyError lists the choices."""
    try:
        return BUILTIN_RULES[name]()
    except KeyError:
        raise RuleNotFoundError(
            f"unknown built-in rule {name!r}; built-in: {', '.join(BUILTIN_RULES)}"
        ) from None


def load_rule(spec: str | Path | Rule) -> Rule:
    """A Rule from a built-in name (`BUILTIN_RULES`), a JSON file, or a Rule itself."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_RULES:
        return builtin_rule(spec)
    path = Path(spec)
    if path.is_file():
        return Rule.load(path)
    raise RuleNotFoundError(
        f"{spec}: neither a rule file nor a built-in rule (built-in: {', '.join(BUILTIN_RULES)})"
    )
