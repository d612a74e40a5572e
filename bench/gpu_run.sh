#!/usr/bin/env bash
# The GPU measurements of bench/README.md, stage by stage, each under its own time limit.
#
#   bash bench/gpu_run.sh STAGE... [--smoke] [--out DIR] [--limit STAGE=SECONDS]... [--until S] [--param K=V]...
#
# STAGE: env | bench | port | main | ablations[:NAME,NAME] | kernels | scopes   (run in the order given)
#   env        nvidia-smi, versions, device properties, measured bf16 matmul peak and copy bandwidth
#   bench      bench/run.py on the cifar10 config at batch 64: the float32 eager reference, FastPath.fastest() (the
#              trainer's default GPU step) and fastest without the CUDA graph; each with its profiler table
#   port       bench/port_bench.py: the 2019 port (from .device/port, prepared by bench/fetch_port.sh) on the same card
#   main       the protocol's main run (nbs/experiments/cifar10_budget.ipynb through papermill): 360 s of training on
#              .device/data/cifar10 (train_00..02, test_first1000), evaluations at 60/120/180/360 s, IW-16, samples,
#              decode(encode(x)) over the test images
#   ablations  the three official ablations (named configs) at 120 s each, one papermill call per run; NAME picks some
#   kernels    bench/kernels.py, then the whole step and sampling with and without the fused kernels (compiled path)
#   scopes     the compile scopes side by side: bench/compile_cost.py (each scope's cold compilation, in a fresh
#              process), then the fastest step with the default block scope and with the per-step scope
# --smoke      every stage but port on the CPU with tiny sizes, in seconds (what `make test` runs)
# --out DIR    results (default: $OUT when set, else bench/results/gpu-run); per stage DIR/STAGE.json (status and
#              figures) and DIR/STAGE.tar.gz (every file, logs included), written as soon as the stage ends; at the
#              end DIR/summary.json and a table on stdout
# --limit      a stage's time limit in seconds (defaults below); a stage that runs out is stopped, keeps what it
#              wrote, and the next stage runs
# --until S    the whole run ends S seconds after it started: no stage runs past that (a stage's own limit may end
#              it sooner); meant for the device call's timeout, less a margin for packing and the transfers
# --param K=V  a parameter of nbs/experiments/cifar10_budget.ipynb for the main and ablations stages, V in JSON
#              (e.g. torch_compile=false, cuda_graph=false); applied last, recorded in protocol.json; repeatable
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}

smoke=0
out=""
until=0
stages=()
params=()
declare -A LIMIT=([env]=40 [bench]=400 [port]=75 [main]=540 [ablations]=690 [kernels]=420 [scopes]=540)
declare -A SMOKE_LIMIT=([env]=60 [bench]=150 [port]=120 [main]=150 [ablations]=240 [kernels]=200 [scopes]=150)
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --limit) LIMIT[${2%%=*}]=${2#*=}; SMOKE_LIMIT[${2%%=*}]=${2#*=}; shift ;;
    --until) until=$2; shift ;;
    --param) params+=(--param "$2"); shift ;;
    --param=*) params+=(--param "${1#--param=}") ;;
    env|bench|port|main|kernels|scopes|ablations|ablations:*) stages+=("$1") ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument '$1' (stages: env bench port main ablations[:NAMES] kernels scopes; --smoke, --out DIR, --limit STAGE=S, --until S, --param K=V)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#stages[@]} -gt 0 ] || { echo "gpu_run.sh: name at least one stage (see --help)" >&2; exit 2; }
# a misspelt or malformed --param fails now, not after the stages before main have spent their time
if [ ${#params[@]} -gt 0 ]; then
  "$PY" bench/stages.py check-params "${params[@]}" || exit 2
fi
DIR=${out:-${OUT:-$ROOT/bench/results/gpu-run}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flowpp-gpu-run.XXXXXX")
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# compiled kernels are cached in an ignored folder of the checkout: a later call on the same (still warm) machine
# finds them there; the compile figures say whether the cache was warm (bench JSON: device.inductor_cache_dir)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ROOT/.device/cache/inductor}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ROOT/.device/cache/triton}
if [ $smoke = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEV=(--device cpu)
else
  DEV=()
fi
DATA=${FLOWPP_CIFAR10:-$ROOT/.device/data/cifar10}
echo "gpu_run.sh: stages ${stages[*]}$([ $smoke = 1 ] && echo ' (smoke, CPU)') -> $DIR (work files in $WORK)"

# ------------------------------------------------------------------------------------------------------------
# helpers: a deadline per stage, and `bounded NAME LOG cmd...` runs cmd within what is left of it

deadline=0
left() { echo $(( deadline - SECONDS )); }
bounded() {  # bounded NAME LOG MAX cmd... : at most MAX seconds (0: all that is left), logged to LOG
  local name=$1 log=$2 max=$3; shift 3
  local t; t=$(left)
  [ "$max" -gt 0 ] && [ "$max" -lt "$t" ] && t=$max
  if [ "$t" -le 5 ]; then echo "  $name: skipped, no time left in the stage" | tee -a "$log"; return 124; fi
  echo "  $name: up to ${t} s: $*" | tee -a "$log"
  timeout -k 10 "$t" "$@" >>"$log" 2>&1
  local rc=$?
  [ $rc = 0 ] || echo "  $name: exit $rc$([ $rc = 124 ] || [ $rc = 137 ] && echo ' (time limit)')" | tee -a "$log"
  tail -n 3 "$log" | sed 's/^/    /'
  return $rc
}
card() {  # h200, h100, ... (cpu in the smoke run): from env.json when the env stage measured it, else asked of torch
  local c=""
  [ -f "$DIR/env.json" ] && c=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['figures'].get('card') or '')" "$DIR/env.json" 2>/dev/null)
  if [ -n "$c" ]; then echo "$c"; return; fi
  "$PY" -c "import sys; sys.path.insert(0, 'bench'); import benchlib, torch; d = benchlib.pick_device('${DEV[1]:-auto}'); print(benchlib.card_slug(d))"
}
need_papermill() {  # papermill and a python3 kernel: from the carried wheels in .whl when missing
  "$PY" -c "import papermill, ipykernel" 2>/dev/null && return 0
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH JUPYTER_PATH=/tmp/site/share/jupyter \
      && "$PY" -m ipykernel install --prefix /tmp/site --name python3 >/dev/null 2>&1
  fi
  "$PY" -c "import papermill, ipykernel" 2>/dev/null || { echo "  papermill is missing: carry the wheels (bench/README.md, prepare_device.sh)"; return 1; }
}

# ------------------------------------------------------------------------------------------------------------
# the stages: each writes into $W and returns non-zero when something failed

stage_env() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 10 nvidia-smi >"$W/nvidia-smi.txt" 2>&1
    timeout 10 nvidia-smi -q >"$W/nvidia-smi-q.txt" 2>&1
  fi
  bounded env_probe "$W/log.txt" 0 "$PY" bench/env_probe.py --out "$W/env.json" $([ $smoke = 1 ] && echo --smoke)
}

stage_bench() {
  local c rc=0; c=$(card)
  if [ $smoke = 1 ]; then
    local common=(--smoke "${DEV[@]}")
    bounded reference "$W/log.txt" 0 "$PY" bench/run.py "${common[@]}" --path reference --out "$W/$c-tiny-b8-reference.json" || rc=1
    bounded fast "$W/log.txt" 0 "$PY" bench/run.py "${common[@]}" --path fastest --no-cuda-graph --no-compile \
      --phases train,profile,sample,eval,equivalence --out "$W/$c-tiny-b8-amp-channels-last.json" || rc=1
  else
    # the reference first (eager: about a minute, certain), then the trainer's default GPU step with every phase,
    # keeping 35 s for the step without its CUDA graph (train and profile only; the compile caches are warm by then)
    bounded reference "$W/log.txt" 60 "$PY" bench/run.py --path reference --phases train,profile,sample,flops,eval,reconstruction \
      --out "$W/$c-cifar10-b64-reference.json" || rc=1
    bounded fastest "$W/log.txt" $(( $(left) > 40 ? $(left) - 35 : 1 )) "$PY" bench/run.py --path fastest --out "$W/$c-cifar10-b64-fastest.json" || rc=1
    bounded fastest-no-cuda-graph "$W/log.txt" 0 "$PY" bench/run.py --path fastest --no-cuda-graph --phases train,profile \
      --out "$W/$c-cifar10-b64-fastest-no-cuda-graph.json" || rc=1
  fi
  return $rc
}

stage_port() {
  local c; c=$(card)
  if [ ! -f .device/port/models/flowplusplus/flowplusplus.py ]; then
    echo "  .device/port is missing: prepare it with bench/fetch_port.sh and carry it (bench/README.md)" | tee -a "$W/log.txt"
    return 1
  fi
  cp .device/port/PORT_SOURCE.json "$W/port-source.json" 2>/dev/null
  if [ $smoke = 1 ]; then
    bounded port "$W/log.txt" 0 "$PY" bench/port_bench.py --smoke "${DEV[@]}" --out "$W/$c-port-smoke.json"
  else
    bounded port "$W/log.txt" 0 "$PY" bench/port_bench.py --out "$W/$c-port-cifar10-b64.json"
  fi
}

protocol() {  # protocol NAME PARAMS_ARGS...: one papermill run of the protocol notebook
  local name=$1; shift
  "$PY" bench/stages.py params "$@" ${params[@]+"${params[@]}"} --out "$W/params-$name.json" || return 1
  bounded "$name" "$W/log.txt" 0 "$PY" -m papermill nbs/experiments/cifar10_budget.ipynb "$W/protocol-$name.ipynb" \
    --cwd nbs/experiments -f "$W/params-$name.json" --no-progress-bar --kernel python3
}

protocol_data() {  # the data folder the protocol reads: the carried shards, or tiny shards in the smoke run
  if [ $smoke = 1 ]; then
    "$PY" bench/stages.py smoke-data "$W/data" && echo "$W/data"
    return
  fi
  local f
  for f in train_00.npz train_01.npz train_02.npz test_first1000.npz; do
    [ -f "$DATA/$f" ] || { echo "  $DATA/$f is missing: copy the shards with bench/prepare_device.sh and carry .device/data (bench/README.md)" >&2; return 1; }
  done
  echo "$DATA"
}

seed_protocol_json() {  # earlier runs' protocol.json (committed in results/), so this call's runs are added to it
  mkdir -p "$W/cifar10_budget"
  if [ $smoke = 0 ] && [ -f results/cifar10_budget/protocol.json ]; then
    cp results/cifar10_budget/protocol.json "$W/cifar10_budget/"
  fi
  return 0
}

stage_main() {
  need_papermill || return 1
  local data; data=$(protocol_data) || return 1
  seed_protocol_json
  protocol main main --work "$W" --data "$data" --run main $([ $smoke = 1 ] && echo --smoke)
}

stage_ablations() {
  need_papermill || return 1
  local data rc=0 name names; data=$(protocol_data) || return 1
  names=$("$PY" bench/stages.py ablation-runs "$ABLATION_SPEC") || return 1
  seed_protocol_json
  if [ $smoke = 1 ]; then  # seconds each: one papermill call for all of them
    protocol ablations ablations --work "$W" --data "$data" $(printf -- '--run %s ' $names) --smoke
    return
  fi
  for name in $names; do  # one papermill call per run: a run cut by the limit does not take the others with it
    protocol "$name" ablations --work "$W" --data "$data" --run "$name" || rc=1
  done
  return $rc
}

stage_kernels() {
  local c rc=0; c=$(card)
  if [ $smoke = 1 ]; then
    bounded coupling "$W/log.txt" 0 "$PY" bench/kernels.py --smoke --no-compile --layouts channels_last --out "$W/kernels.json" || rc=1
    bounded step-kernels "$W/log.txt" 0 "$PY" bench/run.py --smoke "${DEV[@]}" --path fastest --no-cuda-graph --no-compile --kernels \
      --phases train,sample,equivalence --train-iters 1 --sample-images 8 --sample-repeats 1 --out "$W/$c-tiny-b8-kernels.json" || rc=1
  else
    bounded coupling "$W/log.txt" 150 "$PY" bench/kernels.py --out "$W/kernels.json" || rc=1
    bounded step-kernels "$W/log.txt" $(( $(left) / 2 )) "$PY" bench/run.py --path fastest --kernels \
      --phases train,profile,sample,equivalence --out "$W/$c-cifar10-b64-fastest-kernels.json" || rc=1
    bounded step-compiled-reference "$W/log.txt" 0 "$PY" bench/run.py --path fastest \
      --phases train,profile,sample --out "$W/$c-cifar10-b64-fastest-no-kernels.json" || rc=1
  fi
  return $rc
}

stage_scopes() {
  local c rc=0; c=$(card)
  if [ $smoke = 1 ]; then
    bounded compile-cost "$W/log.txt" 0 "$PY" bench/compile_cost.py --smoke --scopes block,step --out "$W/$c-compile-cost-tiny.json" || rc=1
    for scope in block step; do
      bounded "step-$scope" "$W/log.txt" 0 "$PY" bench/run.py --smoke "${DEV[@]}" --path fastest --no-cuda-graph --compile-backend aot_eager \
        --compile-scope $scope --phases train --train-iters 1 --out "$W/$c-tiny-b8-fastest-$scope.json" || rc=1
    done
  else
    # each scope's cold compilation in a fresh process (the default scope first: a cut keeps it), into cache folders
    # that the two steps then start from, so that only the first two compilations are paid in full
    local cache="$ROOT/.device/cache/scopes" t=$(( $(left) * 2 / 3 ))
    bounded compile-cost "$W/log.txt" $t "$PY" bench/compile_cost.py --device cuda --batch-size 64 --scopes block,step \
      --cache-dir "$cache" --scope-timeout $(( t / 2 )) --out "$W/$c-compile-cost-cifar10-b64.json" || rc=1
    for scope in block step; do
      bounded "step-$scope" "$W/log.txt" $([ $scope = block ] && echo $(( $(left) / 2 )) || echo 0) \
        env TORCHINDUCTOR_CACHE_DIR="$cache/$scope/inductor" TRITON_CACHE_DIR="$cache/$scope/triton" \
        "$PY" bench/run.py --path fastest --compile-scope $scope --phases train,profile \
        --out "$W/$c-cifar10-b64-fastest-$scope.json" || rc=1
    done
  fi
  return $rc
}

# ------------------------------------------------------------------------------------------------------------

for spec in "${stages[@]}"; do
  stage=${spec%%:*}
  ABLATION_SPEC=""; [ "$stage" != "$spec" ] && ABLATION_SPEC=${spec#*:}
  if [ $smoke = 1 ] && [ "$stage" = port ]; then echo "== port: not part of the smoke run (it needs .device/port)"; continue; fi
  if [ $smoke = 1 ]; then limit=${SMOKE_LIMIT[$stage]}; else limit=${LIMIT[$stage]}; fi
  W="$WORK/$stage"
  mkdir -p "$W"
  echo "== $stage (limit ${limit} s)"
  start=$SECONDS
  deadline=$(( SECONDS + limit ))
  if [ "$until" -gt 0 ] && [ "$deadline" -gt "$until" ]; then deadline=$until; limit=$(( until - SECONDS )); fi
  if [ "$limit" -le 5 ]; then
    echo "  no time left before --until $until: $stage skipped"
    "$PY" bench/stages.py pack "$stage" --work "$W" --out "$DIR" --status skipped --seconds 0 --limit "$limit" >/dev/null
    continue
  fi
  "stage_$stage"
  rc=$?
  elapsed=$(( SECONDS - start ))
  if [ $rc = 0 ]; then status=ok; elif [ "$(left)" -le 5 ]; then status=timeout; else status=failed; fi
  "$PY" bench/stages.py pack "$stage" --work "$W" --out "$DIR" --status "$status" --seconds "$elapsed" --limit "$limit" \
    || echo "  packing $stage failed"
done
echo
"$PY" bench/stages.py summary "$DIR"
rm -rf "$WORK"
