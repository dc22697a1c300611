#!/usr/bin/env python3
"""blocks.py — reads the per-block records of a `make probe` qchat run.

    make probe
    QG_PROBE_OUT=p.bin build-probe/qchat bench --synthetic 27b:int4 --quick --no-profile
    python3 tools/trace/blocks.py p.bin [GROUPS]

Prints, per launch position within a decode step (launches grouped into
steps where the gap between them exceeds 50 us: the lm_head, sampling and
the host sit there), the medians over the steps of: the span from the PDL
release (the first block past its wait) to the last block's end, when 10 %
and 50 % of the blocks had ended, the gap from the launch before's last
block to this release, the spread of the releases, and how long before the
release the first block was resident. With GROUPS, the block durations of
the launches of that many row groups by block index, and whether the
same SMs are late from launch to launch (correlation of per-SM lateness).

Standard library only. Record layout: kernels/probe.cuh (qg_probe_rec).
"""
import collections
import signal
import statistics as st
import struct
import sys

REC = struct.Struct("<6I3Q")  # launch, smid, block, grid, groups, kind; t_entry, t_wait, t_end (ns)


def die(msg):
    print("blocks.py: " + msg, file=sys.stderr)
    sys.exit(1)


def load(path):
    try:
        data = open(path, "rb").read()
    except OSError as e:
        die("cannot read %s: %s" % (path, e.strerror))
    if not data or len(data) % REC.size:
        die("%s is not a probe file (%d bytes, records are %d)" % (path, len(data), REC.size))
    launches = collections.defaultdict(list)
    for off in range(0, len(data), REC.size):
        r = REC.unpack_from(data, off)
        if r[3] == 0 or r[1] > 4096 or not (r[6] <= r[7] <= r[8]):
            die("%s: record %d is not a probe record" % (path, off // REC.size))
        launches[r[0]].append(r)
    out = []
    for lid in sorted(launches):
        b = launches[lid]
        if len(b) != b[0][3]:  # cut off by the buffer's end
            continue
        ends = sorted(x[8] for x in b)
        out.append(dict(groups=b[0][4], kind=b[0][5], grid=b[0][3], blocks=b,
                        entry=min(x[6] for x in b), release=min(x[7] for x in b),
                        release_last=max(x[7] for x in b), end=ends[-1],
                        end10=ends[len(ends) // 10], end50=ends[len(ends) // 2]))
    if not out:
        die("%s holds no complete launch" % path)
    return out


def steps_of(launches):
    steps, cur = [], [launches[0]]
    for prev, r in zip(launches, launches[1:]):
        if r["release"] - prev["end"] > 50000:
            steps.append(cur)
            cur = []
        cur.append(r)
    steps.append(cur)
    n = collections.Counter(len(s) for s in steps).most_common(1)[0][0]
    return [s for s in steps if len(s) == n]


def per_position(launches):
    steps = steps_of(launches)
    use = steps[2:] if len(steps) > 4 else steps  # the first steps warm up
    print("%d launches, %d decode steps of %d probed launches (medians over %d)" %
          (len(launches), len(steps), len(steps[0]), len(use)))
    print("pos  kind groups grid | span  end10  end50 | gap before | release spread | resident before (us)")
    period = len(use[0])
    for k in range(period):
        rows = []
        for s in use:
            r, prev = s[k], s[k - 1] if k else None
            rows.append(((r["end"] - r["release"]) / 1e3, (r["end10"] - r["release"]) / 1e3,
                         (r["end50"] - r["release"]) / 1e3,
                         (r["release"] - prev["end"]) / 1e3 if prev else float("nan"),
                         (r["release_last"] - r["release"]) / 1e3, (r["release"] - r["entry"]) / 1e3))
        m = [st.median(c) for c in zip(*rows)]
        r = use[0][k]
        print("%3d %5d %6d %4d | %5.1f %5.1f %5.1f | %5.1f | %5.1f | %5.1f" %
              (k, r["kind"], r["groups"], r["grid"], m[0], m[1], m[2], m[3], m[4], m[5]))
    spans = [sum(r["end"] - r["release"] for r in s) / 1e3 for s in use]
    gaps = [sum(s[i]["release"] - s[i - 1]["end"] for i in range(1, len(s))) / 1e3 for s in use]
    print("per step: launches' spans %.0f us, gaps between them %.0f us (medians)" % (st.median(spans), st.median(gaps)))


def corr(a, b):
    ks = [k for k in a if k in b]
    if len(ks) < 8:
        return None
    xa, xb = [a[k] for k in ks], [b[k] for k in ks]
    ma, mb = st.mean(xa), st.mean(xb)
    num = sum((p - ma) * (q - mb) for p, q in zip(xa, xb))
    den = (sum((p - ma) ** 2 for p in xa) * sum((q - mb) ** 2 for q in xb)) ** 0.5
    return num / den if den else None


def by_block(launches, groups):
    sel = [r for r in launches if r["groups"] == groups]
    if not sel:
        die("no launch of %d row groups (have: %s)" % (groups, sorted({r["groups"] for r in launches})))
    sel = sel[len(sel) // 10:]
    dur = collections.defaultdict(list)
    late = []
    for r in sel:
        sm = {}
        for x in r["blocks"]:
            dur[x[2]].append((x[8] - x[7]) / 1e3)
            sm[x[1]] = max(sm.get(x[1], 0), x[8] - r["release"])
        late.append(sm)
    grid = sel[0]["grid"]
    print("%d launches of %d groups on %d blocks: block duration after its wait (us), median, by block index:" %
          (len(sel), groups, grid))
    for i in range(0, grid, 12):
        print("%4d  " % i + " ".join("%5.1f" % st.median(dur[j]) for j in range(i, min(grid, i + 12))))
    cs = [c for c in (corr(late[i], late[i + 1]) for i in range(len(late) - 1)) if c is not None]
    if cs:
        print("per-SM lateness, successive launches: correlation %.2f (near 0: no SM is late by nature)" % st.mean(cs))


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    if len(sys.argv) not in (2, 3):
        die("usage: blocks.py PROBE_FILE [GROUPS]")
    launches = load(sys.argv[1])
    if len(sys.argv) == 3:
        try:
            groups = int(sys.argv[2])
        except ValueError:
            die("GROUPS must be a number: %r" % sys.argv[2])
        by_block(launches, groups)
    else:
        per_position(launches)


if __name__ == "__main__":
    main()
