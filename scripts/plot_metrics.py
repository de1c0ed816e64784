#!/usr/bin/python3
"""Plot the metrics log (JSON lines) of an example training run into a PNG.

Usage: /usr/bin/python3 scripts/plot_metrics.py RUN_DIR/metrics.jsonl [-o plot.png] [--x time]

The log is written by examples/train_copy and examples/train_text: one JSON object per line
with an "event" ("train", "eval", ...), the "step" and "elapsed_s". The upper panel shows the
losses, the lower one accuracy (train_copy) or bits per byte (train_text), against the step or
the wall time. Needs matplotlib (Debian: python3-matplotlib; run it with /usr/bin/python3).
"""
import argparse
import json
import math
import sys


def load(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot_metrics.py: error: {path}:{number}: not JSON ({e.msg})")
    return records


def series(records, event, key, xkey):
    xs, ys = [], []
    for r in records:
        if r.get("event") != event or key not in r or xkey not in r:
            continue
        y = r[key]
        if y is None or (isinstance(y, float) and not math.isfinite(y)):
            continue
        xs.append(r[xkey] / (60.0 if xkey == "elapsed_s" else 1.0))
        ys.append(y)
    return xs, ys


def smooth(ys, window):
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", help="metrics.jsonl of a run")
    ap.add_argument("-o", "--output", help="PNG to write (default: next to the log, .png)")
    ap.add_argument("--x", choices=["step", "time"], default="step",
                    help="horizontal axis: training step or wall time in minutes")
    ap.add_argument("--title", help="figure title (default: from the log's config record)")
    args = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics.py: error: matplotlib is missing; install python3-matplotlib "
                 "and run this script with /usr/bin/python3")

    try:
        records = load(args.log)
    except OSError as e:
        sys.exit(f"plot_metrics.py: error: cannot read {args.log}: {e.strerror}")
    if not records:
        sys.exit(f"plot_metrics.py: error: {args.log} holds no records")
    xkey = "elapsed_s" if args.x == "time" else "step"
    xlabel = "wall time (minutes)" if args.x == "time" else "step"

    title = args.title
    if title is None:
        config = next((r for r in records if r.get("event") == "config"), None)
        title = config.get("title", "") if config else ""

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    xs, ys = series(records, "train", "loss", xkey)
    if xs:
        top.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss")
        top.plot(xs, smooth(ys, 20), color="tab:blue", label="train loss (moving average)")
    xs, ys = series(records, "eval", "eval_loss", xkey)
    if xs:
        top.plot(xs, ys, "o-", color="tab:orange", markersize=3, label="held-out loss")
    top.set_ylabel("cross-entropy (nats)")
    top.set_yscale("log")
    top.grid(True, which="both", alpha=0.3)
    top.legend()

    lower = False
    for key, label, color in [("eval_acc", "held-out accuracy", "tab:green"),
                              ("train_acc", "train accuracy", "tab:olive")]:
        xs, ys = series(records, "eval", key, xkey)
        if xs:
            bottom.plot(xs, [100.0 * y for y in ys], "o-", markersize=3, color=color, label=label)
            bottom.set_ylabel("accuracy (%)")
            bottom.set_ylim(0, 100)
            lower = True
    xs, ys = series(records, "eval", "eval_bpb", xkey)
    if xs:
        bottom.plot(xs, ys, "o-", markersize=3, color="tab:red", label="validation bits/byte")
        bottom.set_ylabel("bits per byte")
        lower = True
    if lower:
        bottom.legend()
    bottom.grid(True, alpha=0.3)
    bottom.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    output = args.output or (args.log.rsplit(".", 1)[0] + ".png")
    try:
        fig.savefig(output, dpi=110)
    except OSError as e:
        sys.exit(f"plot_metrics.py: error: cannot write {output}: {e.strerror}")
    print(output)


if __name__ == "__main__":
    main()
