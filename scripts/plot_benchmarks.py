#!/usr/bin/python3
"""Draws the benchmark plots (PNG) and a Markdown summary from Google Benchmark JSON files.

Usage (Debian's /usr/bin/python3 with python3-matplotlib):

    /usr/bin/python3 scripts/plot_benchmarks.py --out docs/benchmarks \
        attention.json model.json figure5.json [long_context.json] [--summary summary.md]

Inputs are the --benchmark_out=FILE --benchmark_out_format=json files of
benchmarks/{attention_scaling,model_step,figure5} (with or without --benchmark_repetitions;
with repetitions the median is used) and the --json file of benchmarks/long_context.

Plots written to --out, each only when its data is present:
    attention_scaling.png   log-log wall time per token against T, per attention kind,
                            forward and forward+backward
    figure5.png             seconds per training step against T at a fixed number of tokens
                            per step (the Reformer paper's Figure 5)
    memory_depth.png        peak memory of a training step against the number of layers,
                            reversible and stored-activation backward
    model_step.png          tokens/s and GFLOP/s of the model's training step against T
    peers.png               tokens/s against T of this library and Hugging Face transformers
                            on the same model (model_step/hf_config and attention/hf_config of
                            benchmarks/model_step, hf/... of benchmarks/peers/hf_reformer.py)

--summary writes the headline numbers and the performance goals (measured value, pass/fail).
--peers-table writes the table of the comparison (seconds per call and speed-up per T).
--expect N exits with status 1 unless at least N plots were written (used by the tests).
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIME_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
ATTENTION_ORDER = ["dense", "local", "lsh_r1", "lsh_r2", "lsh_r4", "lsh_r8"]
LABELS = {
    "dense": "dense",
    "local": "local (C=64)",
    "lsh_r1": "LSH, 1 hash",
    "lsh_r2": "LSH, 2 hashes",
    "lsh_r4": "LSH, 4 hashes",
    "lsh_r8": "LSH, 8 hashes",
}


# ---- loading ------------------------------------------------------------------------------------


class Run:
    """One benchmark instance: name parts, seconds per iteration, counters."""

    def __init__(self, parts, seconds, counters):
        self.parts = parts
        self.seconds = seconds
        self.counters = counters
        # Best gemm/ GFLOP/s of the same program run (file): GFLOP/s figures are read as a
        # fraction of the GEMM measured next to them, never of another run's.
        self.gemm_ref = float("nan")

    def counter(self, name, default=float("nan")):
        return self.counters.get(name, default)


def _base_name(entry):
    name = entry.get("run_name") or entry["name"]
    for suffix in ("/real_time", "/manual_time"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load(paths):
    """Returns (runs by base name, complexity fits by family, contexts, long-context records)."""
    iterations, medians, fits, contexts, long_runs = {}, {}, {}, [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        file_runs = []
        contexts.append(data.get("context", {}))
        if "long_context" in data:
            long_runs.append(data["long_context"])
        for e in data.get("benchmarks", []):
            if e.get("error_occurred"):
                continue
            agg = e.get("aggregate_name")
            if agg in ("BigO", "RMS"):
                family = _base_name(e)
                for suffix in ("_BigO", "_RMS"):
                    if family.endswith(suffix):
                        family = family[: -len(suffix)]
                fits.setdefault(family, {})[agg] = e
                continue
            if e.get("run_type") == "aggregate" and agg != "median":
                continue
            unit = TIME_UNIT_SECONDS[e.get("time_unit", "ns")]
            seconds = e["real_time"] * unit
            counters = {
                k: v
                for k, v in e.items()
                if isinstance(v, (int, float)) and k not in ("real_time", "cpu_time")
            }
            run = Run(_base_name(e).split("/"), seconds, counters)
            file_runs.append(run)
            if agg == "median":
                medians[_base_name(e)] = run
            else:
                iterations.setdefault(_base_name(e), []).append(run)
        file_ref = [r.counter("GFLOP/s") for r in file_runs if r.parts[0] == "gemm"]
        file_ref = [v for v in file_ref if not math.isnan(v)]
        for r in file_runs:
            r.gemm_ref = max(file_ref) if file_ref else float("nan")
    runs = dict(medians)
    for name, reps in iterations.items():
        if name in runs:
            continue
        reps.sort(key=lambda r: r.seconds)
        runs[name] = reps[len(reps) // 2]  # the median repetition
    return runs, fits, contexts, long_runs


def select(runs, *prefix):
    """Runs whose name starts with the given parts, keyed by the remaining parts."""
    out = {}
    for run in runs.values():
        if tuple(run.parts[: len(prefix)]) == prefix:
            out[tuple(run.parts[len(prefix):])] = run
    return out


def gemm_reference(runs):
    """Best GFLOP/s of the gemm/ family (the GEMM reference of the run)."""
    values = [r.counter("GFLOP/s") for r in select(runs, "gemm").values()]
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else float("nan")


# ---- plots --------------------------------------------------------------------------------------


def save_figure(fig, out_dir, name):
    """Lays out, writes out_dir/name and closes `fig`; returns the path written."""
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_axes(ax, title, xlabel, ylabel):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def plot_attention(runs, fits, out_dir):
    att = select(runs, "attention")
    if not any(len(k) == 3 and k[2].isdigit() for k in att):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, phase, title in zip(axes, ("fwd", "fwd_bwd"), ("forward", "forward + backward")):
        for kind in ATTENTION_ORDER:
            pts = sorted(
                (int(k[2]), r.seconds / int(k[2]))
                for k, r in att.items()
                if len(k) == 3 and k[0] == kind and k[1] == phase and k[2].isdigit()
            )
            if not pts:
                continue
            fit = fits.get(f"attention/{kind}/{phase}", {}).get("BigO", {}).get("big_o", "")
            label = LABELS.get(kind, kind) + (f"  [fit: {fit}]" if fit else "")
            ax.loglog([p[0] for p in pts], [p[1] * 1e6 for p in pts], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"Attention sublayer, {title}")
        ax.set_xlabel("sequence length T (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("wall time per token (µs)")
    fig.suptitle("D=256, H=4, Dh=64, C=64, causal, batch 1")
    return save_figure(fig, out_dir, "attention_scaling.png")


def plot_figure5(runs, out_dir):
    f5 = select(runs, "figure5")
    if not f5:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for kind in ATTENTION_ORDER:
        pts = sorted((int(k[1]), r.seconds) for k, r in f5.items() if k[0] == kind)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=LABELS.get(kind, kind))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({int(k[1]) for k in f5})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    first = next(iter(f5.values()))
    tokens = round(first.counter("tokens/s") * first.seconds / 1024) * 1024  # batch * T
    label_axes(ax, f"Training step, 1 layer, {tokens:.0f} tokens per step (batch = tokens / T)",
               "sequence length T", "seconds per step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, out_dir, "figure5.png")


def plot_memory_depth(runs, out_dir):
    depth = select(runs, "model_depth")
    if not depth:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for mode, style in (("reversible", "o-"), ("stored", "s--")):
        pts = sorted((int(k[1]), r) for k, r in depth.items() if k[0] == mode)
        if not pts:
            continue
        layers = [p[0] for p in pts]
        ax.plot(layers, [p[1].counter("peak_bytes") / 2**20 for p in pts], style,
                label=f"{mode}: peak resident")
        ax.plot(layers, [p[1].counter("peak_extra_bytes") / 2**20 for p in pts], style,
                alpha=0.5, label=f"{mode}: step alone (above parameters)")
    t = next(iter(depth.values())).counter("T")
    label_axes(ax, f"Training step memory against depth, T = {t:.0f}",
               "layers (lsh, local alternating)", "MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "memory_depth.png")


def plot_model_step(runs, out_dir):
    steps = select(runs, "model_step", "L6", "reversible")
    if not steps:
        return None
    pts = sorted((int(k[0]), r) for k, r in steps.items() if k and k[0].isdigit())
    ref = pts[0][1].gemm_ref if pts else float("nan")  # the GEMM of the model_step run
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ts = [p[0] for p in pts]
    ax.plot(ts, [p[1].counter("GFLOP/s") for p in pts], "o-", label="model step GFLOP/s")
    if not math.isnan(ref):
        ax.axhline(ref, color="gray", ls="--", label=f"GEMM reference {ref:.0f} GFLOP/s")
    ax.set_xscale("log", base=2)
    label_axes(ax, "6-layer model training step (lsh, local; R=2)", "sequence length T", "GFLOP/s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(ts, [p[1].counter("peak_bytes") / 2**20 for p in pts], "s:", color="C2",
             label="peak resident MiB")
    ax2.set_ylabel("peak resident MiB")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, out_dir, "model_step.png")


PEER_KINDS = (("model_step", "training step (6 LSH layers)"),
              ("attention", "LSH attention sublayer, fwd+bwd"))


def peer_pairs(runs, kind):
    """{T: (ours, hf)} of one hf_config family; either side may be None."""
    ours = select(runs, kind, "hf_config")
    hf = select(runs, "hf", kind, "hf_config")
    ts = sorted({int(k[0]) for k in list(ours) + list(hf) if len(k) == 1 and k[0].isdigit()})
    return {t: (ours.get((str(t),)), hf.get((str(t),))) for t in ts}


def tokens_per_second(run, t):
    value = run.counter("tokens_per_second")
    return t / run.seconds if math.isnan(value) else value


def plot_peers(runs, out_dir):
    if not any(peer_pairs(runs, kind) for kind, _ in PEER_KINDS):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (kind, label) in enumerate(PEER_KINDS):
        pairs = peer_pairs(runs, kind)
        for side, name, style in ((0, "reformer (C++)", "o-"), (1, "HF transformers", "s--")):
            pts = [(t, tokens_per_second(p[side], t)) for t, p in pairs.items() if p[side]]
            if pts:
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}",
                          label=f"{name}: {label}")
    ax.set_xscale("log", base=2)
    label_axes(ax, "Same model, same machine: D=256, H=4x64, R=2, C=64, buckets T/64, batch 1",
               "sequence length T (tokens)", "tokens per second")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "peers.png")


def peers_table(runs, contexts):
    """Markdown: seconds per call of both libraries and the speed-up (HF time / ours) per T."""
    lines = []
    hf_ctx = next((c for c in contexts if "transformers_version" in c), {})
    ours_ctx = next((c for c in contexts if "reformer_version" in c), {})
    lines.append(f"reformer {ours_ctx.get('reformer_version', '?')} "
                 f"({ours_ctx.get('reformer_threads', '?')} threads, products: "
                 f"{ours_ctx.get('products', '?')}) against transformers "
                 f"{hf_ctx.get('transformers_version', '?')} on torch "
                 f"{hf_ctx.get('torch_version', '?')} ({hf_ctx.get('torch_threads', '?')} "
                 f"threads, BLAS {hf_ctx.get('torch_blas_info', '?')}).")
    for kind, label in PEER_KINDS:
        pairs = peer_pairs(runs, kind)
        if not pairs:
            continue
        lines += ["", f"{label}:", "", "| T | ours s | HF s | speed-up |", "|---|---|---|---|"]
        for t, (ours, hf) in pairs.items():
            a = ours.seconds if ours else None
            b = hf.seconds if hf else None
            speed = f"{b / a:.3g}x" if a and b else "–"
            lines.append(f"| {t} | {fmt(a) if a else '–'} | {fmt(b) if b else '–'} | {speed} |")
    return "\n".join(lines) + "\n"


# ---- summary ------------------------------------------------------------------------------------


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "not measured"
    return f"{x:.{digits}g}"


def summary(runs, fits, contexts, long_runs):
    lines = []
    ctx = next((c for c in contexts if "cpu_model" in c), contexts[0] if contexts else {})
    lines.append(
        f"Machine: {ctx.get('cpu_model', '?')}, {ctx.get('num_cpus', '?')} CPUs, "
        f"{ctx.get('mem_total_gib', '?')[:5]} GiB; library threads {ctx.get('reformer_threads', '?')}; "
        f"products: {ctx.get('products', '?')}; Eigen {ctx.get('eigen_version', '?')} "
        f"({ctx.get('eigen_simd', '?')}); date {ctx.get('date', '?')}."
    )
    refs = sorted({round(r.gemm_ref) for r in runs.values() if not math.isnan(r.gemm_ref)})
    lines.append("GEMM reference (best gemm/ shape of each program run): "
                 f"{', '.join(str(v) for v in refs) or 'not measured'} GFLOP/s; every fraction "
                 "below uses the GEMM of its own program run.")
    lines.append("")
    targets = []

    def target(name, value, ok, detail=""):
        status = "not measured" if ok is None else ("PASS" if ok else "FAIL")
        targets.append(f"| {name} | {value} | {status} | {detail} |")

    att = select(runs, "attention")

    def per_token(kind, phase, t):
        r = att.get((kind, phase, str(t)))
        return r.seconds / t if r else None

    a, b = per_token("lsh_r2", "fwd_bwd", 2**20), per_token("lsh_r2", "fwd_bwd", 2**12)
    ratio = a / b if a and b else None
    target("LSH R=2 fwd+bwd time/token, T=2^20 vs 2^12", f"{fmt(ratio)}x (<= 1.3x)",
           None if ratio is None else ratio <= 1.3,
           "" if ratio is None else f"{a * 1e6:.3g} vs {b * 1e6:.3g} µs/token")
    for fam, want in (("attention/lsh_r2/fwd_bwd", ("N", "NlgN")),
                      ("attention/dense/fwd_bwd", ("N^2",))):
        fit = fits.get(fam, {}).get("BigO", {}).get("big_o")
        target(f"complexity fit of {fam}", fit or "not measured",
               None if fit is None else fit in want, f"want {' or '.join(want)}")
    first = None
    for t in sorted({int(k[2]) for k in att if len(k) == 3 and k[2].isdigit()}):
        lsh, dense = per_token("lsh_r2", "fwd_bwd", t), per_token("dense", "fwd_bwd", t)
        if lsh and dense and lsh < dense and first is None:
            first = t
        if lsh and dense and lsh >= dense:
            first = None
    target("LSH R=2 fwd+bwd faster than dense from T", str(first) if first is not None else "not measured", None if first is None
           else first <= 2048, "want 2048")

    f5 = select(runs, "figure5")
    for kind in ("lsh_r1", "lsh_r2", "lsh_r4", "lsh_r8"):
        secs = [r.seconds for k, r in f5.items() if k[0] == kind]
        if secs:
            spread = max(secs) / min(secs)
            target(f"Figure 5 {kind}: max/min seconds per step", f"{spread:.3g}x (<= 1.3x)",
                   spread <= 1.3)
    d = {int(k[1]): r.seconds for k, r in f5.items() if k[0] == "dense"}
    if d:
        lo, hi = min(d), max(d)
        growth = d[hi] / d[lo]
        target(f"Figure 5 dense: step time T={hi} / T={lo}", f"{growth:.3g}x (>= 10x)",
               growth >= 10 if hi == 32768 else None,
               "" if hi == 32768 else f"T=32768 not measured (largest: {hi})")

    step = select(runs, "model_step", "L6", "reversible")
    r4k = step.get(("4096",))
    if r4k:
        frac = r4k.counter("GFLOP/s") / r4k.gemm_ref
        target("model step T=4096: GFLOP/s / GEMM reference",
               f"{r4k.counter('GFLOP/s'):.3g} GFLOP/s = {100 * frac:.3g}% (>= 65%)", frac >= 0.65,
               f"GEMM {r4k.gemm_ref:.3g} GFLOP/s in the same run")
    vs = select(runs, "model_step", "hf_config", "vs_gemm").get(("4096",))
    if vs:  # the GEMM products timed between the step's iterations (model_step.cpp)
        frac = vs.counter("of_gemm_adjacent")
        target("hf_config step T=4096: GFLOP/s / GEMM products between its iterations",
               f"{vs.counter('GFLOP/s'):.3g} GFLOP/s = {100 * frac:.3g}% (>= 80%)", frac >= 0.80,
               f"best shape {vs.counter('gemm_adjacent_GFLOP/s'):.3g} GFLOP/s")
    alone = select(runs, "attention", "lsh_r2", "fwd_bwd_alone").get(())
    if alone:
        frac = alone.counter("GFLOP/s") / alone.gemm_ref
        target("LSH attention alone (T=16K) / GEMM reference",
               f"{alone.counter('GFLOP/s'):.3g} GFLOP/s = {100 * frac:.3g}% (>= 40%)",
               frac >= 0.40, f"GEMM {alone.gemm_ref:.3g} GFLOP/s in the same run")
    depth = select(runs, "model_depth", "reversible")
    if ("1",) in depth and ("12",) in depth:
        p1, p12 = depth[("1",)], depth[("12",)]
        rp = p12.counter("peak_bytes") / p1.counter("peak_bytes")
        re = p12.counter("peak_extra_bytes") / p1.counter("peak_extra_bytes")
        target("peak memory 12 layers / 1 layer (T=16K)", f"{rp:.3g}x total, {re:.3g}x step "
               "alone (<= 1.15x)", rp <= 1.15,
               f"{p1.counter('peak_bytes') / 2**20:.0f} -> {p12.counter('peak_bytes') / 2**20:.0f} MiB")
    r64 = step.get(("65536",))
    if r64:
        gib = r64.counter("peak_bytes") / 2**30
        target("model step T=64K peak memory", f"{gib:.3g} GiB (< 1 GiB)", gib < 1.0)
    for lr in long_runs:
        gib = lr["peak_bytes"] / 2**30
        target(f"long context T={lr['length']} ({lr['layers']}, R={lr['hashes']})",
               f"{lr['step_seconds']:.3g} s, peak {gib:.3g} GiB (< 4 GiB)", gib < 4.0)

    lines.append("| target | measured | status | notes |")
    lines.append("|---|---|---|---|")
    lines.extend(targets)
    lines.append("")

    # Headline table: time per token and tokens/s of the attention families at a few T.
    if att:
        ts = [t for t in (1024, 4096, 16384, 65536, 2**20)
              if any(k[2] == str(t) for k in att if len(k) == 3)]
        lines.append("Attention sublayer, forward + backward, ms per call (tokens/s in thousands):")
        lines.append("")
        lines.append("| kind | " + " | ".join(f"T={t}" for t in ts) + " |")
        lines.append("|---|" + "---|" * len(ts))
        for kind in ATTENTION_ORDER:
            cells = []
            for t in ts:
                r = att.get((kind, "fwd_bwd", str(t)))
                cells.append(f"{r.seconds * 1e3:.3g} ({r.counter('tokens/s') / 1e3:.3g}k)"
                             if r else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {LABELS.get(kind, kind)} | " + " | ".join(cells) + " |")
        lines.append("")
    if step:
        lines.append("6-layer model training step (lsh, local; R=2):")
        lines.append("")
        lines.append("| T | s/step | tokens/s | GFLOP/s | % of GEMM | peak MiB |")
        lines.append("|---|---|---|---|---|---|")
        for k, r in sorted(step.items(), key=lambda kv: int(kv[0][0])):
            lines.append(f"| {k[0]} | {r.seconds:.3g} | {r.counter('tokens/s'):.4g} | "
                         f"{r.counter('GFLOP/s'):.3g} | {100 * r.counter('GFLOP/s') / r.gemm_ref:.3g} | "
                         f"{r.counter('peak_bytes') / 2**20:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="benchmark JSON files")
    ap.add_argument("--out", required=True, help="directory for the PNG files")
    ap.add_argument("--summary", help="write the Markdown summary here ('-' = stdout)")
    ap.add_argument("--peers-table", help="write the Hugging Face comparison table here "
                    "('-' = stdout)")
    ap.add_argument("--expect", type=int, default=0, help="fail unless this many plots were drawn")
    args = ap.parse_args(argv)

    runs, fits, contexts, long_runs = load(args.inputs)
    os.makedirs(args.out, exist_ok=True)
    written = [p for p in (plot_attention(runs, fits, args.out), plot_figure5(runs, args.out),
                           plot_memory_depth(runs, args.out), plot_model_step(runs, args.out),
                           plot_peers(runs, args.out))
               if p]
    for p in written:
        print(f"wrote {p}")
    if args.summary:
        text = summary(runs, fits, contexts, long_runs)
        if args.summary == "-":
            sys.stdout.write(text)
        else:
            with open(args.summary, "w") as f:
                f.write(text)
            print(f"wrote {args.summary}")
    if args.peers_table:
        text = peers_table(runs, contexts)
        if args.peers_table == "-":
            sys.stdout.write(text)
        else:
            with open(args.peers_table, "w") as f:
                f.write(text)
            print(f"wrote {args.peers_table}")
    if len(written) < args.expect:
        print(f"error: {len(written)} plots written, expected at least {args.expect}",
              file=sys.stderr)
        return 1
    for p in written:
        if os.path.getsize(p) == 0:
            print(f"error: {p} is empty", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
