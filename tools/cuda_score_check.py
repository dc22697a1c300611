#!/usr/bin/env python3
"""cuda_score_check.py — `qchat score --device DEV` against a fixture's goldens.

For one model directory: scores the 200 golden tokens with the given prefill
chunk sizes, and reports the relative L2 error of the logits and of the
final-normed states against golden.safetensors; then scores tokens[:16] +
greedy_tokens (teacher-forced) and checks that the argmax at each greedy step
equals the golden greedy token wherever the golden margin exceeds 0.05, and
(unless --no-cpu) equals the CPU engine's argmax wherever the CPU engine's
top-1 minus top-2 logit margin exceeds 0.05. Goldens without greedy tokens
(the quantized fixtures) get a greedy continuation of 24 tokens from the CPU
engine instead (tokens[:16] as the prompt), checked the same way.
The logits are also compared with the CPU engine's (float32) for the same
200 tokens: printed always, and with --cpu-median-tol a check that the median
over tokens of each token's logits rel L2 is within it. That is the MoE
check: routing is discontinuous, so a near-tie the two engines break
differently moves a few neighbouring tokens far (the goldens allow ~1e-1
overall, ../shared/fixtures/README.md), while every token routed alike
must agree as closely as a dense model's.
Prints one `ok NAME` / `FAIL NAME: why` line per check (tests/harness style).
--derived: MODEL_DIR is made from a fixture (e.g. by `qchat quantize`) and
carries that fixture's golden: its tokens are used, its logits printed
against but not checked, its greedy continuation replaced by the CPU
engine's (tools/moe_quant_check.sh).
--cpu-golden N: MODEL_DIR has no golden (a `qchat synth` checkpoint, e.g.
--size 0.8b for the real head size 256): N random token ids (seed 1) are
scored, and the CPU engine's float32 logits are the golden, checked to
--tol like a fixture's.
--xbf16 (with --cpu-golden): also scores on the CPU engine with every matmul
input rounded to bf16 (QCHAT_CPU_XBF16=1, as the CUDA engine stages them) and
prints, not checks, how far that one rounding moves the CPU's logits (the
model's sensitivity) and the device's logits against that run.

    tools/cuda_score_check.py QCHAT_BIN MODEL_DIR [--device cuda] [--chunks 200,1,37] [--tol 3e-2]
                              [--cpu-median-tol 3e-2] [--no-cpu] [--derived] [--cpu-golden N [--xbf16]]

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


def score(qchat, model, ids, chunk, device, tmp, env=None):
    idf = os.path.join(tmp, "ids.txt")
    out = os.path.join(tmp, "out.safetensors")
    with open(idf, "w") as f:
        f.write(" ".join(str(int(i)) for i in ids))
    cmd = [qchat, "score", model, "--ids", idf, "--out", out, "--chunk", str(chunk), "--device", device,
           "--final-norm"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env) if env else None)
    if p.returncode != 0:
        return None, "exit %d: %s" % (p.returncode, p.stderr.strip()[-300:])
    return read_st(out), None


def cpu_greedy(qchat, model, prompt, n, tmp):
    """n greedy tokens after prompt from the CPU engine (one score per step:
    the fixtures are tiny)."""
    seq = [int(t) for t in prompt]
    out = []
    for _ in range(n):
        o, e = score(qchat, model, seq, len(seq), "cpu", tmp)
        if e:
            return None, e
        t = int(np.argmax(o["logits"][-1]))
        out.append(t)
        seq.append(t)
    return np.array(out, dtype=np.int64), None


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        print(__doc__)
        return 2
    qchat, model = args[0], args[1]
    device, chunks, tol, vs_cpu, cpu_tol, derived, cpu_golden = "cuda", [200, 1, 37], 3e-2, True, None, False, 0
    xbf16 = False
    i = 2
    while i < len(args):
        if args[i] in ("--no-cpu", "--derived", "--xbf16"):
            vs_cpu = vs_cpu and args[i] != "--no-cpu"
            derived = derived or args[i] == "--derived"
            xbf16 = xbf16 or args[i] == "--xbf16"
            i += 1
            continue
        if args[i] == "--device":
            device = args[i + 1]
        elif args[i] == "--chunks":
            chunks = [int(x) for x in args[i + 1].split(",")]
        elif args[i] == "--tol":
            tol = float(args[i + 1])
        elif args[i] == "--cpu-median-tol":
            cpu_tol = float(args[i + 1])
        elif args[i] == "--cpu-golden":
            cpu_golden = int(args[i + 1])
        i += 2
    if cpu_golden and (cpu_golden < 17 or device == "cpu" or not vs_cpu):
        print("cuda_score_check.py: --cpu-golden needs N >= 17 (a 16-token greedy prompt and more), a device "
              "other than cpu, and no --no-cpu", file=sys.stderr)
        return 2
    if xbf16 and not cpu_golden:
        print("cuda_score_check.py: --xbf16 goes with --cpu-golden", file=sys.stderr)
        return 2
    if cpu_golden:
        with open(os.path.join(model, "config.json")) as f:
            cfg = json.load(f)
        vocab = cfg.get("text_config", cfg)["vocab_size"]
        g = {"tokens": np.random.default_rng(1).integers(0, min(vocab, 150000), cpu_golden)}
    else:
        g = read_st(os.path.join(model, "golden.safetensors"))
    name = os.path.basename(model.rstrip("/"))
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        cpu_logits = None
        if vs_cpu and device != "cpu":
            o, e = score(qchat, model, g["tokens"], 200, "cpu", tmp)
            if e:
                print("FAIL cpu_%s_score: %s" % (name, e))
                failed += 1
            else:
                cpu_logits = o["logits"]
                if cpu_golden:
                    g = dict(g, logits=cpu_logits)
                    if "final_norm" in o:
                        g["final_norm"] = o["final_norm"]
                print("# cpu_%s: logits rel_l2=%.3g vs golden" % (name, rel(cpu_logits, g["logits"])))
        xbf16_logits = None
        if xbf16 and cpu_logits is not None:
            o, e = score(qchat, model, g["tokens"], 200, "cpu", tmp, {"QCHAT_CPU_XBF16": "1"})
            if e:
                print("FAIL cpu_xbf16_%s_score: %s" % (name, e))
                failed += 1
            else:
                xbf16_logits = o["logits"]
                print("# cpu_xbf16_%s: logits rel_l2=%.3g vs cpu (matmul inputs rounded to bf16)" %
                      (name, rel(xbf16_logits, cpu_logits)))
        if cpu_golden and cpu_logits is None:
            print("FAIL %s: --cpu-golden needs the CPU engine's scores" % name)
            return 1
        for c in chunks:
            o, e = score(qchat, model, g["tokens"], c, device, tmp)
            tag = "%s_%s_chunk%d" % (device, name, c)
            if e:
                print("FAIL %s: %s" % (tag, e))
                failed += 1
                continue
            rl = rel(o["logits"], g["logits"])
            rn = rel(o["final_norm"], g["final_norm"]) if "final_norm" in o and "final_norm" in g else float("nan")
            top = float(np.mean(np.argmax(o["logits"], -1) == np.argmax(g["logits"], -1)))
            print("# %s: logits rel_l2=%.3g final_norm rel_l2=%.3g top1_agree=%.3f (tol %.0e)" % (tag, rl, rn, top, tol))
            ok = rl <= tol and (rn != rn or rn <= tol)
            if not derived:
                print(("ok %s" % tag) if ok else ("FAIL %s: rel_l2 %.3g > %.0e" % (tag, max(rl, rn), tol)))
                failed += not ok
            if xbf16_logits is not None:
                print("# %s_vs_cpu_xbf16: logits rel_l2=%.3g" % (tag, rel(o["logits"], xbf16_logits)))
            if cpu_logits is not None:
                a64, c64 = o["logits"].astype(np.float64), cpu_logits.astype(np.float64)
                rc_ = rel(a64, c64)
                per = np.linalg.norm(a64 - c64, axis=1) / np.linalg.norm(c64, axis=1)
                med, p90 = float(np.median(per)), float(np.percentile(per, 90))
                tc = float(np.mean(np.argmax(a64, -1) == np.argmax(c64, -1)))
                print("# %s_vs_cpu: logits rel_l2=%.3g per-token median %.3g p90 %.3g max %.3g top1_agree=%.3f" %
                      (tag, rc_, med, p90, float(per.max()), tc))
                if cpu_tol is not None:
                    okc = med <= cpu_tol
                    print(("ok %s_vs_cpu" % tag) if okc else
                          ("FAIL %s_vs_cpu: per-token median rel_l2 %.3g > %.0e" % (tag, med, cpu_tol)))
                    failed += not okc
        if derived:  # the golden's greedy continuation is the source model's
            g = {k: v for k, v in g.items() if not k.startswith("greedy")}
        golden_greedy = "greedy_tokens" in g
        if not golden_greedy and vs_cpu and device != "cpu":
            gt, e = cpu_greedy(qchat, model, g["tokens"][:16], 24, tmp)
            if e:
                print("FAIL cpu_%s_greedy: %s" % (name, e))
                failed += 1
            else:
                g = dict(g)
                g["greedy_prompt_len"] = np.array([16])
                g["greedy_tokens"] = gt
                g["greedy_margins"] = np.full(len(gt), -1.0)  # no golden margins: only the CPU check counts
        if "greedy_tokens" in g:
            pl = int(g["greedy_prompt_len"][0])
            gt, gm = g["greedy_tokens"], g["greedy_margins"]
            seq = np.concatenate([g["tokens"][:pl], gt[:-1]])
            cpu_pred = cpu_clear = None
            if vs_cpu and device != "cpu":
                o, e = score(qchat, model, seq, pl, "cpu", tmp)
                if e:
                    print("FAIL cpu_%s_greedy: %s" % (name, e))
                    failed += 1
                else:
                    lg = o["logits"][pl - 1:].astype(np.float64)
                    top2 = np.sort(lg, -1)[:, -2:]
                    cpu_pred = np.argmax(lg, -1)
                    cpu_clear = (top2[:, 1] - top2[:, 0]) > 0.05
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
                if golden_greedy:
                    print("# %s: %d/%d clear-margin steps match" % (tag, int(np.sum((pred == gt) & clear)), int(clear.sum())))
                    print(("ok %s" % tag) if not bad else ("FAIL %s: steps %s differ" % (tag, bad)))
                    failed += bool(bad)
                if cpu_pred is not None:
                    tag = "%s_%s_greedy_vs_cpu_chunk%d" % (device, name, c)
                    bad = [int(j) for j in np.nonzero((pred != cpu_pred) & cpu_clear)[0]]
                    print("# %s: %d/%d clear-margin (CPU) steps match the CPU engine" %
                          (tag, int(np.sum((pred == cpu_pred) & cpu_clear)), int(cpu_clear.sum())))
                    print(("ok %s" % tag) if not bad else ("FAIL %s: steps %s differ" % (tag, bad)))
                    failed += bool(bad)
                    for j in bad:  # how near the step was: margins and this row's distance from the CPU
                        row = o["logits"][pl - 1 + j].astype(np.float64)
                        g2 = np.sort(row)[-2:]
                        print("#   step %d: golden margin %.4f, CPU margin %.4f, %s margin %.4f, rel L2 vs CPU %.4f"
                              % (j, gm[j], top2[j, 1] - top2[j, 0], device, g2[1] - g2[0],
                                 np.linalg.norm(row - lg[j]) / np.linalg.norm(lg[j])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
