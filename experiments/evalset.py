"""D_eval for the study, and keeping it out of the training sources.

Reading lives in `instructmining.evalsets` (the contamination check reads eval
sets too); the overlap rule is the contamination check's exact-prompt match
(`selection.contamination`), so the study and `instructmining check` agree on
what "the same task" is: equal instruction + input after normalising case,
Unicode forms, punctuation and spacing.
"""

from __future__ import annotations

from instructmining.evalsets import EvalSet, build_eval_set
from instructmining.selection.contamination import prompt_key
from instructmining.selection.contamination import remove_prompt_overlap as remove_overlap

__all__ = ["EvalSet", "build_eval_set", "prompt_key", "remove_overlap"]
