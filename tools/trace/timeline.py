#!/usr/bin/env python3
"""timeline.py — reads kernel_trace.so's output and breaks one decode step of
the 27B synthetic benchmark into its kernels (a diagnostic; stdlib only).

    python3 tools/trace/timeline.py TRACE FMT      (FMT: int4, nvfp4, fp8, bf16)

The decode steps are the CUDA-graph launches (kernels with a graph id); a
run of graph launches between non-graph kernels is one context length of
the benchmark. For the median step of each run it prints, per kernel role,
the time the kernels take (start to end) and the time they add to the step
(exposed: the part of a kernel that runs after every kernel started before
it has ended), against the bytes the role must read at the copy bandwidth."""
import statistics
import sys

COPY = 3.0e12  # bytes/s, the H100's measured copy bandwidth (BENCHMARKS.md)
D, I, HV, DV, DK, HK = 5120, 17408, 48, 128, 128, 16
H, KV, HD, VOCAB = 24, 4, 256, 248320
BPE = {"int4": 0.5 + 4 / 128, "nvfp4": 0.5 + 1 / 16, "fp8": 1.0 + 4 / 16384, "bf16": 2.0}


def role_bytes(fmt):
    b = BPE[fmt]
    gdn_in = (2 * HK * DK + HV * DV + HV * DV) * D * b + 2 * HV * D * 2
    return {
        "gemv.in.gdn": gdn_in,
        "gemv.out.gdn": D * HV * DV * b,
        "gemv.in.attn": (2 * H * HD + 2 * KV * HD) * D * b,
        "gemv.out.attn": D * H * HD * b,
        "gemv.gu": 2 * I * D * b,
        "gemv.down": D * I * b,
        "head": VOCAB * D * 2,
    }


def category(name):
    n = name.lower()
    for key, cat in (("k_gemv_q", "gemv"), ("gemv", "head"), ("gdn", "gdn"), ("attn", "attn"),
                     ("swiglu", "swiglu"), ("rmsnorm", "norm"), ("embed", "embed")):
        if key in n:
            return cat
    return "other"


def main():
    fmt = sys.argv[2] if len(sys.argv) > 2 else "int4"
    if len(sys.argv) not in (2, 3) or fmt not in BPE:
        sys.exit(f"usage: timeline.py TRACE [{'|'.join(BPE)}]")
    recs, names = [], {}
    try:
        with open(sys.argv[1]) as f:
            lines = f.read().splitlines()
    except OSError as e:
        sys.exit(f"timeline.py: {e}")
    for n, line in enumerate(lines, 1):
        p = line.split()
        try:
            if p and p[0] == "K":
                recs.append((int(p[1]), int(p[2]), int(p[3]), int(p[6]), int(p[7]), int(p[8])))
            elif p and p[0] == "N":
                names[int(p[1])] = p[2] if len(p) > 2 else "?"
            else:
                raise ValueError
        except (ValueError, IndexError):
            sys.exit(f"timeline.py: {sys.argv[1]}:{n}: not a kernel_trace line")
    if not any(r[3] for r in recs):
        sys.exit(f"timeline.py: {sys.argv[1]}: no kernels from CUDA graphs (decode steps) in this trace")
    rb = role_bytes(fmt)
    recs.sort()
    # steps: graph launches, split where a graph node comes again; runs (one context length each):
    # split where more than 20 kernels outside a graph (a prefill) come between two graph launches
    # (each decode step's sampling runs outside the graph)
    runs, run, step, seen, loose = [], [], [], set(), 0
    for r in recs:
        if r[3] == 0:
            loose += 1
            continue
        if r[4] in seen or loose:
            if step:
                run.append(step)
            step, seen = [], set()
            if loose > 20 and run:
                runs.append(run)
                run = []
            loose = 0
        seen.add(r[4])
        step.append(r)
    if step:
        run.append(step)
    if run:
        runs.append(run)
    for ri, run in enumerate(runs):
        st = [s for s in run if len(s) > 20]
        if len(st) < 3:
            continue
        st = st[1:]  # the first launch of a run may include a warm-up
        spans = [s[-1][1] - s[0][0] for s in st]
        med = sorted(range(len(st)), key=lambda i: spans[i])[len(st) // 2]
        analyse(ri, st[med], statistics.median(spans), names, rb, len(st))


def analyse(ri, step, span_med, names, rb, nsteps):
    step = sorted(step)
    t0 = step[0][0]
    cur = t0
    roles, idle, g_in_layer, layer_attn = {}, 0, 0, False
    order = []
    for s, e, grid, gid, node, ni in step:
        name = names.get(ni, "?")
        cat = category(name)
        role = cat
        if cat == "gemv":
            kind = ("in", "out", "gu", "down")[g_in_layer % 4]
            if kind == "in":
                layer_attn = None
            if kind == "out":
                role = "gemv.out." + ("attn" if layer_attn else "gdn")
            elif kind == "in":
                role = "gemv.in.?"
            else:
                role = "gemv." + kind
            g_in_layer += 1
        if cat == "attn":
            layer_attn = True
        if cat == "gdn":
            layer_attn = False
        order.append([role, s, e, grid, name])
        idle += max(0, s - cur)
        exposed = max(0, e - max(s, cur))
        cur = max(cur, e)
        order[-1].append(exposed)
    # the in-projection's layer type is known once its layer's gdn/attn kernel is seen
    for i, o in enumerate(order):
        if o[0] == "gemv.in.?":
            for o2 in order[i + 1:]:
                if o2[0] in ("attn", "gdn"):
                    o[0] = "gemv.in." + o2[0]
                    break
    for o in order:
        r = roles.setdefault(o[0], [0, 0, 0, set()])
        r[0] += 1
        r[1] += o[2] - o[1]
        r[2] += o[5]
        r[3].add(o[4][:40])
    span = step[-1][1] - t0
    print(f"run {ri}: {nsteps} steps, median step {span_med / 1e3:.1f} us (this one {span / 1e3:.1f} us, "
          f"{len(step)} kernels, idle {idle / 1e3:.1f} us)")
    print(f"  {'role':16s} {'n':>4s} {'sum us':>9s} {'exposed':>9s} {'per launch':>10s} {'ideal':>7s} {'eff':>5s}")
    tot_ideal = 0
    for k in sorted(roles, key=lambda k: -roles[k][2]):
        n, dur, exp, _ = roles[k]
        ideal = rb.get(k, 0) / COPY * 1e6
        tot_ideal += ideal * n
        eff = f"{ideal * n / (exp / 1e3) * 100:4.0f}%" if ideal and exp else ""
        print(f"  {k:16s} {n:4d} {dur / 1e3:9.1f} {exp / 1e3:9.1f} {exp / 1e3 / n:10.2f} {ideal:7.2f} {eff:>5s}")
    print(f"  ideal (weights at {COPY / 1e12:.1f} TB/s) {tot_ideal:.0f} us = {tot_ideal / (span / 1e3) * 100:.0f}% of the step")
    # one layer in detail: the kernels of the 5th and 8th layers (GDN, attention at 27B)
    gi = [i for i, o in enumerate(order) if o[0].startswith("gemv.in")]
    for li in (4, 7):
        if li + 1 < len(gi):
            print(f"  layer {li}:")
            prev_end = order[gi[li] - 1][2]
            for o in order[gi[li]:gi[li + 1]]:
                print(f"    {o[0]:16s} start {(o[1] - prev_end) / 1e3:+7.2f} dur {(o[2] - o[1]) / 1e3:7.2f} "
                      f"exposed {o[5] / 1e3:6.2f} grid {o[3]:5d} {o[4][:50]}")
                prev_end = o[2]


if __name__ == "__main__":
    main()
