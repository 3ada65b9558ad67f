#!/usr/bin/env bash
# The rest of the study in one command: run.sh with the frozen study code (every
# candidate under one code version), then verdict.sh with the main code.
# IM_STUDY: the frozen code's command (commit 09ddcd2, see README.md "To continue");
# IM_MAIN: this checkout's command. Both resume where they stopped.
set -euo pipefail
cd "$(dirname "$0")"
IM="${IM_STUDY:?set IM_STUDY to the instructmining of the frozen study code (commit 09ddcd2)}" ./run.sh
IM="${IM_MAIN:-../../.venv/bin/instructmining}" ./verdict.sh
