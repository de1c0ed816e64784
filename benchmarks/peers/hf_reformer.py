#!/usr/bin/python3
"""Times Hugging Face transformers' Reformer (PyTorch, CPU) on the "hf_config" model.

Writes Google Benchmark-compatible JSON, so the results sit next to those of the C++ program
benchmarks/model_step (families model_step/hf_config/<T> and attention/hf_config/<T>, the
same configuration) and scripts/plot_benchmarks.py draws both.

The configuration, for each sequence length T (a multiple of 64, at least 128):
    hidden 256, 4 heads x 64, attn_layers ["lsh"] * 6, num_hashes 2, lsh_attn_chunk_length 64,
    num_buckets T / 64, lsh_num_chunks_before 1 / after 0, causal (is_decoder), gelu,
    feed_forward_size 1024, chunk_size_feed_forward T / 8, axial positions (64, T / 64) x
    (64, 192), vocab 256, every dropout 0, batch 1, max_position_embeddings T.

Benchmarks (one process, float32, torch.set_num_threads(--threads)):
    hf/model_step/hf_config/<T>   one training step of ReformerModelWithLMHead: zero_grad,
                                  forward with labels, loss.backward() (HF's reversible backward)
    hf/attention/hf_config/<T>    ReformerAttention (LayerNorm + LSH self-attention + output
                                  dense) alone: forward, then backward of a fixed random
                                  upstream gradient (autograd)
Each: one untimed warm-up call, then --reps timed calls (one JSON entry each, plus the
_median and _mean aggregates). Counters: tokens_per_second, peak_bytes (peak resident memory
of the process during the benchmark, VmHWM after a reset through /proc/self/clear_refs; when
the reset is refused it is the peak since the process started and peak_reset is 0),
peak_extra_bytes (peak_bytes minus the resident memory when the benchmark started), threads.

Needs torch (Debian python3-torch) and transformers 4.29.2 + huggingface_hub 0.15.1 on the
PYTHONPATH (benchmarks/peers/README.md).

    PYTHONPATH=<transformers>/src:<huggingface_hub>/src /usr/bin/python3 \\
        benchmarks/peers/hf_reformer.py --lengths 1024 2048 --threads 2 --reps 3 --out hf.json
"""

import argparse
import datetime
import gc
import json
import os
import re
import socket
import statistics
import sys
import time

DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
KINDS = ("model", "attention")
FAMILY = {"model": "hf/model_step/hf_config", "attention": "hf/attention/hf_config"}


# ---- the configuration --------------------------------------------------------------------------


def hf_config(transformers, t):
    """The ReformerConfig of sequence length t."""
    if t < 128 or t % 64 != 0:
        raise ValueError(f"sequence length {t}: must be a multiple of 64 and at least 128 "
                         "(num_buckets = T / 64 must be even)")
    return transformers.ReformerConfig(
        vocab_size=256,
        hidden_size=256,
        num_attention_heads=4,
        attention_head_size=64,
        attn_layers=["lsh"] * 6,
        num_hashes=2,
        lsh_attn_chunk_length=64,
        num_buckets=t // 64,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        local_attn_chunk_length=64,
        local_num_chunks_before=1,
        local_num_chunks_after=0,
        is_decoder=True,
        hidden_act="gelu",
        feed_forward_size=1024,
        chunk_size_feed_forward=t // 8,
        axial_pos_embds=True,
        axial_pos_shape=(64, t // 64),
        axial_pos_embds_dim=(64, 192),
        max_position_embeddings=t,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        use_cache=False,
    )


# ---- memory -------------------------------------------------------------------------------------


def _status_bytes(field):
    """A kB field of /proc/self/status in bytes (0 when absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMeter:
    """Peak resident memory from construction on: resets VmHWM (clear_refs 5) when allowed."""

    def __init__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.baseline = _status_bytes("VmRSS")

    def peak(self):
        hwm = _status_bytes("VmHWM")
        if hwm == 0:  # no /proc: ru_maxrss (KiB on Linux) is the peak since the process started
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return hwm

    def extra(self):
        return max(0, self.peak() - self.baseline)


# ---- the timed work -----------------------------------------------------------------------------


def model_step_work(torch, transformers, t):
    """A callable running one training step, and the number of tokens it processes."""
    config = hf_config(transformers, t)
    torch.manual_seed(0)
    model = transformers.ReformerModelWithLMHead(config)
    model.train()
    ids = torch.randint(0, config.vocab_size, (1, t), dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()

    return step, t


def attention_work(torch, transformers, t):
    """A callable running ReformerAttention forward + backward, and its number of tokens."""
    from transformers.models.reformer.modeling_reformer import ReformerAttention

    config = hf_config(transformers, t)
    torch.manual_seed(0)
    layer = ReformerAttention(config, layer_id=0)
    layer.train()
    x = torch.randn(1, t, config.hidden_size, requires_grad=True)
    dy = torch.randn(1, t, config.hidden_size)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = layer(x, use_cache=False)
        out.hidden_states.backward(dy)

    return step, t


WORK = {"model": model_step_work, "attention": attention_work}


def measure(torch, transformers, kind, t, reps, warmup):
    """Runs one benchmark: returns (per-repetition (wall s, cpu s), counters shared by all)."""
    step, tokens = WORK[kind](torch, transformers, t)
    meter = PeakMeter()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - w0, time.process_time() - c0))
    counters = {
        "peak_bytes": float(meter.peak()),
        "peak_extra_bytes": float(meter.extra()),
        "peak_reset": 1.0 if meter.reset_ok else 0.0,
        "threads": float(torch.get_num_threads()),
    }
    del step
    gc.collect()
    return times, tokens, counters


# ---- JSON ---------------------------------------------------------------------------------------


def cpu_flags():
    """The CPU flags of interest present in /proc/cpuinfo, and the model name."""
    flags, model = set(), "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {f: f in flags for f in ("avx2", "avx512f", "fma")}, model


def blas_settings(torch):
    """BLAS_INFO / LAPACK_INFO of torch's build settings, and the BLAS library loaded now."""
    text = torch.__config__.show()
    settings = {}
    for key in ("BLAS_INFO", "LAPACK_INFO", "USE_MKLDNN", "USE_OPENMP"):
        found = re.search(r"\b" + key + r"=([^,\s]*)", text)
        if found:
            settings[key] = found.group(1)
    loaded = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if any(s in name for s in ("blas", "mkl", "lapack")):
                    loaded.add(os.path.realpath(path))
    except OSError:
        pass
    return settings, sorted(loaded), text


def openblas_core(libraries):
    """The kernels OpenBLAS chose (openblas_get_corename: "Haswell", "Cooperlake", ...) in the
    first library of `libraries` that has it, or "?"."""
    import ctypes

    for path in libraries:
        try:
            get = ctypes.CDLL(path).openblas_get_corename
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_char_p
        name = get()
        return name.decode() if name else "?"
    return "?"


# The environment that changes the timings: an emulated CPU (benchmarks/peers/README.md,
# "Emulating an AVX2 host") and OpenMP's waiting policy.
TIMING_ENV = ("ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA",
              "GLIBC_TUNABLES", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def context(torch, transformers, threads):
    flags, model = cpu_flags()
    settings, loaded, text = blas_settings(torch)
    capability = re.search(r"CPU capability usage:\s*(\S+)", text)
    ctx = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_name": socket.gethostname(),
        "executable": os.path.abspath(__file__),
        "num_cpus": os.cpu_count(),
        "cpu_model": model,
        "library_build_type": "release",
        "peer": "huggingface transformers (PyTorch)",
        "python_version": sys.version.split()[0],
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": str(threads),
        "torch_blas_info": settings.get("BLAS_INFO", "?"),
        "torch_lapack_info": settings.get("LAPACK_INFO", "?"),
        "torch_use_mkldnn": settings.get("USE_MKLDNN", "?"),
        "torch_blas_libraries": " ".join(loaded) or "?",
        # The ATen kernels in use (AVX2, AVX512, NO = default), as torch.__config__.show() says.
        "torch_cpu_capability": capability.group(1) if capability else "?",
        "openblas_core": openblas_core(loaded),
        "torch_config": text,
    }
    for name in TIMING_ENV:  # "" when not set
        ctx[name] = os.environ.get(name, "")
    for name, present in flags.items():
        ctx[f"cpu_{name}"] = "yes" if present else "no"
    return ctx


def entries(kind, t, family_index, instance_index, times, tokens, counters):
    """The Google Benchmark entries of one benchmark: repetitions, then median and mean."""
    name = f"{FAMILY[kind]}/{t}"
    reps = len(times)
    common = {
        "family_index": family_index,
        "per_family_instance_index": instance_index,
        "run_name": name,
        "repetitions": reps,
        "threads": 1,
        "iterations": 1,
        "time_unit": "ms",
    }
    out = []
    for i, (wall, cpu) in enumerate(times):
        e = dict(common, name=name, run_type="iteration", repetition_index=i,
                 real_time=wall * 1e3, cpu_time=cpu * 1e3,
                 tokens_per_second=tokens / wall)
        e.update(counters)
        out.append(e)
    for agg, fn in (("median", statistics.median), ("mean", statistics.mean)):
        wall = fn([w for w, _ in times])
        cpu = fn([c for _, c in times])
        e = dict(common, name=f"{name}_{agg}", run_type="aggregate", aggregate_name=agg,
                 aggregate_unit="time", real_time=wall * 1e3, cpu_time=cpu * 1e3,
                 tokens_per_second=fn([tokens / w for w, _ in times]))
        e.update(counters)
        out.append(e)
    return out


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS,
                    help="sequence lengths T (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    ap.add_argument("--only", choices=KINDS, help="only the model step or only the attention")
    ap.add_argument("--out", help="JSON file (default: standard output)")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.threads < 1 or args.warmup < 0:
        ap.error(f"--reps = {args.reps} and --threads = {args.threads} must be >= 1, "
                 f"--warmup = {args.warmup} >= 0")
    for t in args.lengths:
        if t < 128 or t % 64 != 0:
            ap.error(f"--lengths: T = {t} must be a multiple of 64 and at least 128")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"hf_reformer.py: {e}: needs torch and transformers 4.29.2 (with huggingface_hub "
              "0.15.1) on the PYTHONPATH, see benchmarks/peers/README.md", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    kinds = [args.only] if args.only else list(KINDS)
    benchmarks = []
    for t in args.lengths:
        for kind in kinds:
            times, tokens, counters = measure(torch, transformers, kind, t, args.reps,
                                              args.warmup)
            median = statistics.median(w for w, _ in times)
            print(f"{FAMILY[kind]}/{t}: median {median * 1e3:.1f} ms, "
                  f"{tokens / median:.0f} tokens/s, peak {counters['peak_bytes'] / 2**20:.0f} MiB",
                  file=sys.stderr)
            benchmarks += entries(kind, t, KINDS.index(kind), args.lengths.index(t), times,
                                  tokens, counters)
    doc = {"context": context(torch, transformers, args.threads), "benchmarks": benchmarks}
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
