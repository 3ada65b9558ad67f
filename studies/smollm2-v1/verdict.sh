#!/usr/bin/env bash
# After run.sh has finished every candidate: fit the rule on the main configuration,
# then judge it on the unseen pool (dolly_3k) against the baselines, 5 seeds each.
# Resumable like run.sh: compare skips the runs its folder already holds.
set -euo pipefail
cd "$(dirname "$0")"
IM=${IM:-instructmining}
case $IM in /*|instructmining) ;; *) echo "verdict.sh: IM must be an absolute path (the script changes directory)" >&2; exit 2;; esac
D=../../../shared/data
BASE=smollm2-135m-instruct
TRAIN="--precision fp32 --template chat"   # as run.sh
# the fit waits for every candidate of the main configuration
DONE=$(python3 -c "import sqlite3; print(sqlite3.connect('results.sqlite').execute(\"SELECT COUNT(*) FROM results WHERE config = '33c4031d0d9d' AND status = 'done'\").fetchone()[0])")
WANT=$(python3 -c "import json; print(len(json.load(open('study.json'))['candidates']))")
if [ "$DONE" != "$WANT" ]; then
  echo "verdict.sh: $DONE of $WANT candidates done in configuration 33c4031d0d9d; finish run.sh first" >&2
  exit 1
fi
# the six planned indicators plus log_perplexity (the mean of log-perplexity, read from
# the cached perplexity scores: see "Decisions for the fit" in README.md)
[ -f fit/rule.json ] || $IM study fit . --add-indicators log_perplexity --name smollm2-v1   # fit/rule.json, report.md, results.csv
# shipped as the built-in rule smollm2-v1 (tests/test_shipped_rules.py refits it from fit/results.csv)
cmp -s fit/rule.json ../../regression/rules/smollm2-v1.json || {
  mkdir -p ../../regression/rules && cp fit/rule.json ../../regression/rules/smollm2-v1.json; }
COMPARE="$IM study compare . --pool $D/pools/dolly_3k.json --rule fit/rule.json --size 256 --seeds 5 --by category --base-model $BASE $TRAIN"
# rule-in-range stops the comparison before any training when dolly_3k cannot give a
# subset inside the fitted range; that is a finding to report, and the other four go on
if ! $COMPARE --strategies rule,rule-in-range,random,longest,top:ifd; then
  echo "verdict.sh: the five-strategy comparison stopped (above); running the other four" >&2
  $COMPARE --strategies rule,random,longest,top:ifd
fi
