#!/usr/bin/env bash
# The full benchmark measurement behind the README's Benchmarks section: builds the benchmark
# programs (Release, -march=native), runs each with repetitions (medians in the JSON), runs the
# long-context step, and regenerates the plots and the summary of the performance goals.
#
#   bash scripts/run_benchmarks.sh [--long] [--wait-quiet] [--reps N] [--threads N]
#                                  [--build DIR] [--out DIR] [--gemm eigen|openblas|auto]
#
#   --long        also the long ranges: attention up to T = 2^20 (points that do not fit in
#                 the available memory are skipped) and the long-context 2^20-token step
#   --wait-quiet  before each program, wait until the 1-minute load average is below 1.5
#                 (timings on a loaded machine are meaningless)
#   --reps N      repetitions per benchmark (default 3; the median is reported)
#   --threads N   library threads (default: all cores)
#   --build DIR   build directory (default build/bench)
#   --out DIR     results directory (default benchmarks/results)
#   --gemm B      GEMM backend of the build (REFORMER_GEMM): eigen, openblas (Eigen's products
#                 through OpenBLAS) or auto (default: the one configure measured faster here)
#   --peers       instead of the above: the side-by-side comparison with Hugging Face
#                 transformers on the same model (benchmarks/peers/README.md). For each T, our
#                 model_step/hf_config and attention/hf_config, then benchmarks/peers/
#                 hf_reformer.py at the same T, thread count and repetitions (interleaved, so
#                 both see the same machine state). Writes <out>/peers_reformer.json,
#                 <out>/peers_hf.json, <out>/peers.png and <out>/peers.md (table, also printed).
#                 The peer comes from REFORMER_PEERS_PYTHONPATH (prepended to PYTHONPATH: the
#                 src/ folders of transformers v4.29.2 and huggingface_hub v0.15.1) and
#                 REFORMER_PEERS_PYTHON (default /usr/bin/python3, with Debian's python3-torch).
#   --peers-lengths "T ..."  the T of --peers (default "1024 2048 4096 8192 16384 32768 65536")
#
# Results: <out>/{attention_scaling,model_step,figure5}.json (Google Benchmark JSON),
# <out>/long_context*.json, <out>/*.png and <out>/summary.md (performance goals, headline tables).
# The default run (without --long) takes about 20-30 minutes on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build/bench"
out="$root/benchmarks/results"
reps=3
threads=0
long=0
wait_quiet=0
gemm=auto
peers=0
peers_lengths="1024 2048 4096 8192 16384 32768 65536"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) long=1 ;;
    --wait-quiet) wait_quiet=1 ;;
    --reps) reps="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --build) build="$2"; shift ;;
    --out) out="$2"; shift ;;
    --gemm)
      gemm="$2"; shift
      case "$gemm" in
        eigen|openblas|auto) ;;
        *) echo "run_benchmarks.sh: --gemm $gemm: expected eigen, openblas or auto" >&2; exit 2 ;;
      esac ;;
    --peers) peers=1 ;;
    --peers-lengths) peers_lengths="$2"; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "run_benchmarks.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

python=/usr/bin/python3
if ! "$python" -c "import matplotlib" 2>/dev/null; then
  echo "run_benchmarks.sh: $python cannot import matplotlib (apt-get install python3-matplotlib)" >&2
  exit 1
fi

wait_for_quiet() {
  [[ $wait_quiet == 1 ]] || return 0
  while true; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" 'BEGIN { exit !(l < 1.5) }'; then return 0; fi
    echo "  load average $load >= 1.5, waiting..."
    sleep 60
  done
}

# ---- --peers: the comparison with Hugging Face transformers ------------------------------------
run_peers() {
  local peer_python="${REFORMER_PEERS_PYTHON:-/usr/bin/python3}"
  local peer_path="${REFORMER_PEERS_PYTHONPATH:-}${PYTHONPATH:+:$PYTHONPATH}"
  local version
  if ! version=$(cd / && PYTHONPATH="$peer_path" "$peer_python" -c \
      "import torch, transformers; print(transformers.__version__)" 2>&1); then
    cat >&2 <<EOF
run_benchmarks.sh --peers: $peer_python cannot import torch and transformers:
  ${version##*$'\n'}
The comparison needs:
  - torch: apt-get install python3-torch python3-requests python3-tqdm python3-yaml \\
      python3-filelock python3-packaging python3-regex python3-typing-extensions
  - the sources of transformers v4.29.2 (github.com/huggingface/transformers, tag v4.29.2)
    and huggingface_hub v0.15.1 (github.com/huggingface/huggingface_hub, tag v0.15.1),
    e.g. unpacked into PEERS/transformers and PEERS/huggingface_hub;
then run with
  REFORMER_PEERS_PYTHONPATH=PEERS/transformers/src:PEERS/huggingface_hub/src \\
    bash scripts/run_benchmarks.sh --peers
(REFORMER_PEERS_PYTHON selects the interpreter, default /usr/bin/python3). See
benchmarks/peers/README.md.
EOF
    exit 1
  fi
  [[ $version == 4.29.2 ]] ||
    echo "note: transformers $version; the comparison was written against 4.29.2" >&2
  local n=$threads
  [[ $n != 0 ]] || n=$(nproc)

  echo "== build ($build): model_step"
  [[ -f $build/CMakeCache.txt ]] ||
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DREFORMER_NATIVE=ON \
      -DREFORMER_BUILD_BENCHMARKS=ON -DREFORMER_GEMM="${gemm^^}" >/dev/null
  cmake --build "$build" --target model_step -j"$(nproc)"
  mkdir -p "$out"
  parts=$(mktemp -d)
  trap 'rm -rf "$parts"' EXIT
  local t
  for t in $peers_lengths; do
    wait_for_quiet
    echo "== T=$t: reformer model_step/hf_config, attention/hf_config" \
      "(load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$build/benchmarks/model_step" --tmin="$t" --tmax="$t" --threads="$n" --no_gemm \
      --benchmark_filter='^(model_step|attention)/hf_config/' \
      --benchmark_repetitions="$reps" --benchmark_out_format=json \
      --benchmark_out="$parts/reformer_$t.json"
    wait_for_quiet
    echo "== T=$t: transformers $version (load $(cut -d' ' -f1-3 /proc/loadavg))"
    PYTHONPATH="$peer_path" "$peer_python" "$root/benchmarks/peers/hf_reformer.py" \
      --lengths "$t" --threads "$n" --reps "$reps" --out "$parts/hf_$t.json"
  done
  # One JSON per library: the context of the first T, the benchmarks of every T.
  local merge='import json, sys
docs = [json.load(open(p)) for p in sys.argv[2:]]
doc = {"context": docs[0]["context"], "benchmarks": [b for d in docs for b in d["benchmarks"]]}
json.dump(doc, open(sys.argv[1], "w"), indent=2)'
  local ours=() hf=()
  for t in $peers_lengths; do
    ours+=("$parts/reformer_$t.json")
    hf+=("$parts/hf_$t.json")
  done
  "$python" -c "$merge" "$out/peers_reformer.json" "${ours[@]}"
  "$python" -c "$merge" "$out/peers_hf.json" "${hf[@]}"
  "$python" "$root/scripts/plot_benchmarks.py" --out "$out" --peers-table "$out/peers.md" \
    "$out/peers_reformer.json" "$out/peers_hf.json"
  cat "$out/peers.md"
}
if [[ $peers == 1 ]]; then
  run_peers
  exit 0
fi

echo "== build ($build, REFORMER_GEMM=${gemm^^})"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DREFORMER_NATIVE=ON \
  -DREFORMER_BUILD_BENCHMARKS=ON -DREFORMER_GEMM="${gemm^^}" | { grep "GEMM backend" || true; }
cmake --build "$build" --target attention_scaling model_step figure5 long_context -j"$(nproc)"
bin="$build/benchmarks"
mkdir -p "$out"

common=(--benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true
        --benchmark_out_format=json)
[[ $threads != 0 ]] && common+=(--threads="$threads")

run() {  # run <program> <json name> [args...]
  local prog="$1" name="$2"
  shift 2
  wait_for_quiet
  echo "== $prog $*  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$bin/$prog" "${common[@]}" --benchmark_out="$out/$name.json" "$@"
}

if [[ $long == 1 ]]; then
  run attention_scaling attention_scaling --long
else
  run attention_scaling attention_scaling
fi
run model_step model_step
run figure5 figure5

long_jsons=()
if [[ $long == 1 ]]; then
  # The 2^20 step, capped at 90% of the memory available now (fails cleanly past it), and the
  # same model at shorter lengths to show how time and memory grow.
  avail_kib=$(awk '/MemAvailable/ { print $2 }' /proc/meminfo)
  cap=$(awk -v k="$avail_kib" 'BEGIN { printf "%.1f", 0.9 * k / 1048576 }')
  lc_threads=()
  [[ $threads != 0 ]] && lc_threads=(--threads="$threads")
  for log2 in 16 17 18 20; do
    wait_for_quiet
    json="$out/long_context_2e$log2.json"
    echo "== long_context T=2^$log2 (address space cap $cap GiB)"
    if "$bin/long_context" --length=$((1 << log2)) --max_gib="$cap" --json="$json" \
        "${lc_threads[@]}"; then
      long_jsons+=("$json")
    else
      echo "   T=2^$log2 did not complete (see above)"
    fi
  done
fi

"$python" "$root/scripts/plot_benchmarks.py" --out "$out" --summary "$out/summary.md" \
  "$out/attention_scaling.json" "$out/model_step.json" "$out/figure5.json" "${long_jsons[@]}"
echo "== summary: $out/summary.md"
cat "$out/summary.md"
