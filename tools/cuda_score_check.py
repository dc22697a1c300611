#!/usr/bin/env python3
"""cuda_score_check.py — `qchat score --device DEV` against a fixture's goldens.

For one model directory: scores the 200 golden tokens with the given prefill
chunk sizes, and reports the relative L2 error of the logits and of the
final-normed states against golden.safetensors; then scores tokens[:16] +
greedy_tokens (teacher-forced) and checks that the argmax at each greedy step
equals the golden greedy token wherever the golden margin exceeds 0.05.
Prints one `ok NAME` / `FAIL NAME: why` line per check (tests/harness style).

    tools/cuda_score_check.py QCHAT_BIN MODEL_DIR [--device cuda] [--chunks 200,1,37] [--tol 3e-2]

Needs numpy only (safetensors files are read directly). Exit status 1 when a
check failed."""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

DT = {"F32": np.float32, "I32": np.int32, "F16": np.float16, "I64": np.int64}


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            f.seek(base + a)
            out[k] = np.frombuffer(f.read(b - a), dtype=DT[v["dtype"]]).reshape(v["shape"])
        return out


def rel(a, r):
    a = a.astype(np.float64)
    r = r.astype(np.float64)
    return float(np.linalg.norm(a - r) / np.linalg.norm(r))


def score(qchat, model, ids, chunk, device, tmp):
    idf = os.path.join(tmp, "ids.txt")
    out = os.path.join(tmp, "out.safetensors")
    with open(idf, "w") as f:
        f.write(" ".join(str(int(i)) for i in ids))
    cmd = [qchat, "score", model, "--ids", idf, "--out", out, "--chunk", str(chunk), "--device", device,
           "--final-norm"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return None, "exit %d: %s" % (p.returncode, p.stderr.strip()[-300:])
    return read_st(out), None


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        print(__doc__)
        return 2
    qchat, model = args[0], args[1]
    device, chunks, tol = "cuda", [200, 1, 37], 3e-2
    i = 2
    while i < len(args):
        if args[i] == "--device":
            device = args[i + 1]
        elif args[i] == "--chunks":
            chunks = [int(x) for x in args[i + 1].split(",")]
        elif args[i] == "--tol":
            tol = float(args[i + 1])
        i += 2
    g = read_st(os.path.join(model, "golden.safetensors"))
    name = os.path.basename(model.rstrip("/"))
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for c in chunks:
            o, e = score(qchat, model, g["tokens"], c, device, tmp)
            tag = "%s_%s_chunk%d" % (device, name, c)
            if e:
                print("FAIL %s: %s" % (tag, e))
                failed += 1
                continue
            rl = rel(o["logits"], g["logits"])
            rn = rel(o["final_norm"], g["final_norm"]) if "final_norm" in o else float("nan")
            top = float(np.mean(np.argmax(o["logits"], -1) == np.argmax(g["logits"], -1)))
            print("# %s: logits rel_l2=%.3g final_norm rel_l2=%.3g top1_agree=%.3f (tol %.0e)" % (tag, rl, rn, top, tol))
            ok = rl <= tol and (rn != rn or rn <= tol)
            print(("ok %s" % tag) if ok else ("FAIL %s: rel_l2 %.3g > %.0e" % (tag, max(rl, rn), tol)))
            failed += not ok
        if "greedy_tokens" in g:
            pl = int(g["greedy_prompt_len"][0])
            gt, gm = g["greedy_tokens"], g["greedy_margins"]
            seq = np.concatenate([g["tokens"][:pl], gt[:-1]])
            for c in (1, pl):
                tag = "%s_%s_greedy_chunk%d" % (device, name, c)
                o, e = score(qchat, model, seq, c, device, tmp)
                if e:
                    print("FAIL %s: %s" % (tag, e))
                    failed += 1
                    continue
                pred = np.argmax(o["logits"][pl - 1:], -1)
                clear = gm > 0.05
                bad = [int(j) for j in np.nonzero((pred != gt) & clear)[0]]
                print("# %s: %d/%d clear-margin steps match" % (tag, int(np.sum((pred == gt) & clear)), int(clear.sum())))
                print(("ok %s" % tag) if not bad else ("FAIL %s: steps %s differ" % (tag, bad)))
                failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
