#!/usr/bin/env bash
# After verdict.sh: the same comparison at an equal budget of response tokens instead
# of an equal record count. At K = 256 the rule's subsets trained on about 4x the
# response tokens of random's; here every subset holds as many of its strategy's
# records as fit into 20,000 response tokens (what random's 256 records held), so the
# rule cannot win by volume alone. Resumable like verdict.sh. longest is left out: at
# K = 256 it shared 236 of 256 records with the rule and measured the same loss.
set -euo pipefail
cd "$(dirname "$0")"
IM=${IM:-instructmining}
case $IM in /*|instructmining) ;; *) echo "tokens.sh: IM must be an absolute path (the script changes directory)" >&2; exit 2;; esac
D=../../../shared/data
$IM study compare . --pool $D/pools/dolly_3k.json --rule fit/rule.json --tokens 20000 --seeds 5 \
  --strategies rule,random,top:ifd,rule-in-range --by category \
  --base-model smollm2-135m-instruct --precision fp32 --template chat
