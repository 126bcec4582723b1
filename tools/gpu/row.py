"""tools/gpu_bench.sh's bookkeeping for the ViT-B/16 rows.

    python tools/gpu/row.py STEP BATCH WHO RC OUT.json MEM.log BASE_MIB ERR.log   # one JSON row
    python tools/gpu/row.py --table ROWS.jsonl CLASSES                           # markdown table

Peak GPU memory is the largest `memory.used` nvidia-smi sampled (every 100 ms) while the row's
process ran, less what was in use before it started (the whole process: weights, activations,
the allocator's pool, CUDA context). TFLOP/s are the analytic model FLOPs of the step (matmuls
and attention; the formula of `step_flops` in src/cli/bench_perf.rs) over the median step time.
"""
import json
import sys

# ViT-B/16: vision 224 px, patch 16, width 768, MLP 3072, 12 layers; text width 512, MLP 2048,
# 12 layers.
V = dict(image=224, patch=16, d=768, mlp=3072, layers=12)
T = dict(d=512, mlp=2048, layers=12)


def tower(tokens, d, mlp, layers):
    return layers * (2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d)


def step_flops(step, b, classes):
    grid = V["image"] // V["patch"]
    t = grid * grid + 1
    stem = 2 * grid * grid * (3 * V["patch"] ** 2) * V["d"]
    img = stem + tower(t, V["d"], V["mlp"], V["layers"])
    if step == "embed":
        return b * img
    if step == "phase1":
        vis = b * 2 * (stem + tower(t + 20, V["d"], V["mlp"], V["layers"]))
        txt = 2 * classes * 2 * tower(24, T["d"], T["mlp"], T["layers"])
        return vis + txt
    if step == "phase2":
        return 3 * b * img
    if step == "moco":
        return 4 * b * img
    return None


def row(step, b, who, rc, out, mem, base, err):
    r = {"step": step, "batch": int(b), "who": who, "rc": int(rc)}
    try:
        with open(out) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        r.update(json.loads(lines[-1]))
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(mem) as f:
            used = [float(l) for l in f.read().split() if l.strip()]
        if used:
            r["peak_gpu_mib_sampled"] = max(used) - float(base)
    except (OSError, ValueError):
        pass
    if "img_per_s" not in r:
        try:
            with open(err) as f:
                tail = [l for l in f.read().splitlines() if l.strip()][-3:]
            r["error"] = " / ".join(tail)[-300:]
        except OSError:
            r["error"] = "no output"
        if int(rc) in (124, 137):
            r["error"] = "timed out; " + r.get("error", "")
    print(json.dumps(r))


def table(path, classes):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault((r["step"], r["batch"]), {})[r["who"]] = r
    out = [
        "| step | batch | coft f32 img/s | coft bf16 img/s | PyTorch bf16 img/s | f32 / PyTorch | "
        "bf16 / PyTorch | TFLOP/s f32 / bf16 / PyTorch | peak GPU MiB f32 / bf16 / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ips(r):
        return r.get("img_per_s") if r else None

    def fmt(v, p=1):
        return "-" if v is None else f"{v:.{p}f}"

    for (step, b), w in by.items():
        t, f32, bf = w.get("torch"), w.get("f32"), w.get("bf16")
        fl = step_flops(step, b, classes)

        def tf(r):
            return None if not r or "step_s" not in r or not fl else fl / r["step_s"] / 1e12

        def mib(r):
            return None if not r else r.get("peak_gpu_mib_sampled")

        def ratio(r):
            return None if not ips(r) or not ips(t) else ips(r) / ips(t)

        out.append(
            f"| {step} | {b} | {fmt(ips(f32))} | {fmt(ips(bf))} | {fmt(ips(t))} | "
            f"{fmt(ratio(f32), 2)} | {fmt(ratio(bf), 2)} | "
            f"{fmt(tf(f32))} / {fmt(tf(bf))} / {fmt(tf(t))} | "
            f"{fmt(mib(f32), 0)} / {fmt(mib(bf), 0)} / {fmt(mib(t), 0)} |"
        )
    errors = [r for r in rows if "error" in r]
    if errors:
        out.append("")
        for r in errors:
            out.append(f"- {r['step']} b{r['batch']} {r['who']} (exit {r['rc']}): {r['error']}")
    print("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2], int(sys.argv[3]))
    else:
        row(*sys.argv[1:9])
