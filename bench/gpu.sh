#!/usr/bin/env bash
# The key memory/speed table on one CUDA card, peaks from the CUDA caching allocator (max_memory_allocated).
#
#   bash bench/gpu.sh                 # from the repository root, with the project's venv (.venv) set up
#
# BERT-base shape (random init), seq 512, batch 8, fp32, AdamW; depths 12, 24, 48; methods full, full+gc, lora,
# lora+gc, meft1-exact, meft1-float. Each row runs in its own `python -m mefts_core.bench` process under `timeout`,
# so a row that runs out of memory, hangs or crashes is reported and skipped, never takes the rest down. A global
# deadline (BUDGET_S, default 420 s) skips the rows still queued when it passes, so the script ends in under
# 8 minutes. Output: the card's name, the table (Markdown) on stdout, and rows in $OUT (JSON per row, table.md,
# rows.csv, rows.json, logs/).
#
# Settings (environment): OUT (default /tmp/mefts-gpu-bench), PY (.venv/bin/python), SEQ (512), BATCH (8),
# LAYERS ("12 24 48"), METHODS, ROW_TIMEOUT (seconds per row, 100), BUDGET_S (420), WARMUP (2), REPEATS (5),
# BACKBONE (bert-base), DEVICE (cuda; cpu only to dry-run this script), FITS=1 also searches the largest batch that fits 24 GiB for lora+gc and meft1-exact at 12 layers (real OOM
# catching; adds about a minute per method).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
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

mkdir -p "$OUT/rows" "$OUT/logs"
rm -f "$OUT"/rows/*.json
start=$(date +%s)

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
      --repeats "$REPEATS" --no-progress --output "$OUT/rows/$name.json" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    set -e
    if (( rc == 124 || rc == 137 )); then
      skipped+=("$name: timed out after ${limit}s (skipped)")
      rm -f "$OUT/rows/$name.json"
    elif (( rc != 0 )); then
      skipped+=("$name: failed, exit $rc (see $OUT/logs/$name.log)")
      tail -n 3 "$OUT/logs/$name.log" | sed 's/^/    /'
      rm -f "$OUT/rows/$name.json"
    else
      status=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; print(r["status"] + (": " + r["note"] if r["note"] else ""))' "$OUT/rows/$name.json")
      [[ "$status" == ok* ]] || skipped+=("$name: $status")
    fi
  done
done

echo
echo "## $card: $BACKBONE, seq $SEQ, batch $BATCH, float32 (peak = CUDA max_memory_allocated)"
echo
shopt -s nullglob
rows=("$OUT"/rows/*.json)
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
    --fits 24 --fits-output "$OUT/fits.json" 2> "$OUT/logs/fits.log" | sed -n '/max batch/,$p'
  (( PIPESTATUS[0] == 0 )) || echo "fits search did not finish (see $OUT/logs/fits.log)"
  set -e
fi
echo
echo "elapsed $(( $(date +%s) - start )) s; rows in $OUT"
