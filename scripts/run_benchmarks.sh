#!/usr/bin/env bash
# The full benchmark measurement behind the README's Benchmarks section: builds the benchmark
# programs (Release, -march=native unless --march), runs each with repetitions (medians in the
# JSON), runs the long-context step, and regenerates the plots and the summary of the performance
# goals.
#
#   bash scripts/run_benchmarks.sh [--long] [--wait-quiet] [--reps N] [--threads N]
#                                  [--build DIR] [--out DIR] [--gemm eigen|openblas|auto]
#                                  [--march X]
#   bash scripts/run_benchmarks.sh --peers [--peers-lengths "T ..."] [--peers-warmup N]
#                                  [--wait-quiet] [--reps N] [--threads N] [--build DIR]
#                                  [--out DIR] [--gemm B] [--march X]
#
#   --long        also the long ranges: attention up to T = 2^20 (points that do not fit in
#                 the available memory are skipped) and the long-context 2^20-token step
#   --wait-quiet  before each program, wait until the 1-minute load average is below 1.5
#                 (timings on a loaded machine are meaningless)
#   --reps N      repetitions per benchmark (default 3; the median is reported)
#   --threads N   library threads (default: all cores)
#   --build DIR   build directory (default build/bench; build/bench-X with --march X)
#   --out DIR     results directory (default benchmarks/results)
#   --gemm B      GEMM backend of the build (REFORMER_GEMM): eigen, openblas (Eigen's products
#                 through OpenBLAS) or auto (default: the one configure measured faster here)
#   --march X     -march of our programs (REFORMER_MARCH; default native). Another value
#                 emulates an older CPU on this one (benchmarks/peers/README.md, "Emulating an
#                 AVX2 host"): the build uses only X's instructions, and every program runs with
#                 the CPU-dispatch environment of X's class:
#                   haswell, broadwell, skylake, alderlake, x86-64-v3, znver1-3 (AVX2 + FMA):
#                     OPENBLAS_CORETYPE=Haswell and GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F
#                     (and -AVX512VL, BW, DQ, CD) for both programs (OpenBLAS's kernels, glibc's
#                     memcpy, libm, ...); ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2
#                     for the peer (torch's own kernels)
#                   x86-64-v4, skylake-avx512, cascadelake, cooperlake, icelake-*, tigerlake,
#                   sapphirerapids, znver4 (AVX-512): OPENBLAS_CORETYPE=SkylakeX,
#                     ATEN_CPU_CAPABILITY=avx512, ONEDNN_MAX_CPU_ISA=AVX512_CORE
#                 Other values: an error. An existing --build DIR configured with another
#                 REFORMER_MARCH is reconfigured (and rebuilt).
#   --peers       instead of the above: the side-by-side comparison with Hugging Face
#                 transformers on the same model (benchmarks/peers/README.md). For each T, our
#                 model_step/hf_config and attention/hf_config, then benchmarks/peers/
#                 hf_reformer.py at the same T, thread count and repetitions (interleaved, so
#                 both see the same machine state), both with the caller's OMP_WAIT_POLICY
#                 (unset: libgomp's default, threads spin a while before sleeping; which
#                 setting is faster depends on the host and the program, docs/benchmarks.md:
#                 compare both). Writes <out>/peers_reformer.json,
#                 <out>/peers_hf.json, <out>/peers.png and <out>/peers.md (table, also printed).
#                 The peer comes from REFORMER_PEERS_PYTHONPATH (prepended to PYTHONPATH: the
#                 src/ folders of transformers v4.29.2 and huggingface_hub v0.15.1) and
#                 REFORMER_PEERS_PYTHON (default /usr/bin/python3, with Debian's python3-torch).
#   --peers-lengths "T ..."  the T of --peers (default "1024 2048 4096 8192 16384 32768 65536")
#   --peers-warmup N         untimed calls of the peer before its --reps timed ones (default 1;
#                 0 halves the peer's time at T = 65536, about 7 minutes per call)
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
march=native
build_set=0
peers=0
peers_warmup=1
peers_lengths="1024 2048 4096 8192 16384 32768 65536"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) long=1 ;;
    --wait-quiet) wait_quiet=1 ;;
    --reps) reps="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --build) build="$2"; build_set=1; shift ;;
    --out) out="$2"; shift ;;
    --gemm)
      gemm="$2"; shift
      case "$gemm" in
        eigen|openblas|auto) ;;
        *) echo "run_benchmarks.sh: --gemm $gemm: expected eigen, openblas or auto" >&2; exit 2 ;;
      esac ;;
    --march) march="$2"; shift ;;
    --peers) peers=1 ;;
    --peers-lengths) peers_lengths="$2"; shift ;;
    --peers-warmup) peers_warmup="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run_benchmarks.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# The CPU-dispatch environment that makes this host's libraries run the kernels of --march's class
# (see --help). Ours: emul_env (both programs); the peer's: emul_env + peer_env.
emul_env=()
peer_env=()
if [[ $march != native ]]; then
  [[ $build_set == 1 ]] || build="$root/build/bench-$march"
  case "$march" in
    haswell|broadwell|skylake|alderlake|x86-64-v3|znver1|znver2|znver3)
      emul_env=(OPENBLAS_CORETYPE=Haswell
                GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD)
      peer_env=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) ;;
    x86-64-v4|skylake-avx512|cascadelake|cooperlake|icelake-client|icelake-server|tigerlake|\
    sapphirerapids|znver4)
      emul_env=(OPENBLAS_CORETYPE=SkylakeX)
      peer_env=(ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE) ;;
    *)
      echo "run_benchmarks.sh: --march $march: no emulation environment for it (see --help for" \
           "the values with one)" >&2
      exit 2 ;;
  esac
  echo "== emulating -march=$march: ${emul_env[*]} (both), ${peer_env[*]} (peer)"
fi

# The configure arguments of --march (the probe of REFORMER_GEMM=AUTO times OpenBLAS's kernels of
# the emulated class too). Native: none, the build directory's own settings (default native).
march_args=()
if [[ $march != native ]]; then
  march_args=(-DREFORMER_NATIVE=ON -DREFORMER_MARCH="$march")
  for kv in "${emul_env[@]}"; do
    if [[ $kv == OPENBLAS_CORETYPE=* ]]; then
      march_args+=(-DREFORMER_OPENBLAS_CORETYPE="${kv#*=}")
    fi
  done
fi

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
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DREFORMER_NATIVE=ON \
      -DREFORMER_BUILD_BENCHMARKS=ON -DREFORMER_GEMM="${gemm^^}" "${march_args[@]}" >/dev/null
  else
    # An existing build directory keeps its settings (e.g. a preset's), but must build --march.
    local cached
    cached=$(sed -n 's/^REFORMER_MARCH:STRING=//p' "$build/CMakeCache.txt")
    if [[ $(sed -n 's/^REFORMER_NATIVE:BOOL=//p' "$build/CMakeCache.txt") != ON ||
          ${cached:-native} != "$march" ]]; then
      echo "   REFORMER_MARCH ${cached:-native} -> $march (reconfigure, full rebuild)"
      cmake -B "$build" -DREFORMER_NATIVE=ON -DREFORMER_MARCH="$march" "${march_args[@]}" \
        >/dev/null
    fi
  fi
  grep -E '^REFORMER_(MARCH|GEMM_SELECTED|GEMM_PROBE|OPENBLAS_CORETYPE):' "$build/CMakeCache.txt" |
    sed 's/^/   /'
  cmake --build "$build" --target model_step -j"$(nproc)"
  mkdir -p "$out"
  parts=$(mktemp -d)
  trap 'rm -rf "$parts"' EXIT
  # Both programs wait the same way: with the caller's OMP_WAIT_POLICY, or libgomp's default.
  echo "== both programs with OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset: libgomp default)}"
  local t
  for t in $peers_lengths; do
    wait_for_quiet
    echo "== T=$t: reformer model_step/hf_config, attention/hf_config" \
      "(load $(cut -d' ' -f1-3 /proc/loadavg))"
    env "${emul_env[@]}" "$build/benchmarks/model_step" --tmin="$t" --tmax="$t" \
      --threads="$n" \
      --no_gemm \
      --benchmark_filter='^(model_step|attention)/hf_config/[0-9]' \
      --benchmark_repetitions="$reps" --benchmark_out_format=json \
      --benchmark_out="$parts/reformer_$t.json"
    wait_for_quiet
    echo "== T=$t: transformers $version (load $(cut -d' ' -f1-3 /proc/loadavg))"
    env "${emul_env[@]}" "${peer_env[@]}" PYTHONPATH="$peer_path" "$peer_python" \
      "$root/benchmarks/peers/hf_reformer.py" --lengths "$t" --threads "$n" --reps "$reps" \
      --warmup "$peers_warmup" --out "$parts/hf_$t.json"
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

echo "== build ($build, REFORMER_GEMM=${gemm^^}, -march=$march)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DREFORMER_NATIVE=ON \
  -DREFORMER_BUILD_BENCHMARKS=ON -DREFORMER_GEMM="${gemm^^}" -DREFORMER_MARCH="$march" \
  "${march_args[@]}" | { grep "GEMM backend" || true; }
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
  env "${emul_env[@]}" "$bin/$prog" "${common[@]}" --benchmark_out="$out/$name.json" "$@"
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
    if env "${emul_env[@]}" "$bin/long_context" --length=$((1 << log2)) --max_gib="$cap" \
        --json="$json" "${lc_threads[@]}"; then
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
