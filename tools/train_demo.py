"""train_demo.py — trains qchat's embedded demo model and writes it as a
Qwen3.5 text-only checkpoint directory (demo/bf16).

The model is transformers' own Qwen3_5ForCausalLM (same layer types, gated
attention, Gated DeltaNet with Hv/Hk = 2, zero-centred norms, tied embeddings),
about 5 M parameters, trained from scratch on tools/demo_task.py's arithmetic
with visible reasoning. Everything random derives from --seed.

Training is bit-reproducible on one kind of machine: fixed seeds (python, numpy,
torch), the data stream drawn from its own seeded RNG in one producer process,
torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG set before
CUDA starts, eager attention (its backward is plain matmuls; SDPA's fused
backward is not deterministic), and transformers' torch reference path for the
Gated DeltaNet and its conv (the optional fla / causal-conv1d kernels are blocked).

Reproduce the shipped model (on the GPU machine: torch 2.11, transformers 5.17):
    python3 tools/train_demo.py --out demo/bf16 --seed 1234 --steps <N from the README>
With --steps 0 the script measures its step time during warm-up (steps 20-80,
where the learning rate does not depend on the total yet) and picks the number of
steps that fits --budget-s (at most --max-steps), records it in the log, and the
run equals one with --steps N exactly. --steps-file shares that choice between
concurrent runs (tools/demo_repro.sh): the first run to decide writes it, the
others read it.

Writes OUT/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
chat_template.jinja, generation_config.json, train_log.txt}.
"""
import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

# cuBLAS reduces deterministically only with a fixed workspace, and reads this
# when CUDA starts: it must be set before torch touches the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# The optional fast kernels (fla's Triton GDN, causal-conv1d) have no
# determinism guarantee; blocking their import makes transformers use its torch
# reference path whatever is installed.
for _mod in ("fla", "causal_conv1d"):
    sys.modules.setdefault(_mod, None)

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import demo_task  # noqa: E402
import make_demo_tokenizer  # noqa: E402

VOCAB_PAD = 512  # embedding rows (tokenizer has 407 ids; rows past them are padding)


def make_config():
    from transformers import Qwen3_5TextConfig
    return Qwen3_5TextConfig(
        vocab_size=VOCAB_PAD, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
        layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3
        + ["full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
        linear_value_head_dim=64, linear_conv_kernel_dim=4,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25, "mrope_section": [4, 2, 2],
                         "mrope_interleaved": True},
        eos_token_id=402, pad_token_id=400, bos_token_id=None,
    )


class Batcher:
    """Draws fresh examples each step from its own RNG; prompt and completion are
    tokenized separately, exactly as qchat tokenizes a prompt and then appends
    generated ids, and only the completion is scored."""

    def __init__(self, tok, seed, exclude, pad_id):
        self.tok, self.rng, self.exclude, self.pad = tok, random.Random(seed), exclude, pad_id

    def __call__(self, n):
        ex = [demo_task.make_example(self.rng, self.exclude) for _ in range(n)]
        ps = self.tok.encode_batch([p for p, _ in ex])
        cs = self.tok.encode_batch([c for _, c in ex])
        seqs = [(p.ids, c.ids) for p, c in zip(ps, cs)]
        L = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((n, L), self.pad, dtype=torch.long)
        lab = torch.full((n, L), -100, dtype=torch.long)
        for i, (p, c) in enumerate(seqs):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            lab[i, len(p):len(p) + len(c)] = torch.tensor(c)
        return ids, lab


@torch.no_grad()
def _producer(tok_path, seed, exclude, batch, q):
    """Worker process: one Batcher, so the stream of batches is the same as
    drawing them in the main process (one producer, order preserved)."""
    from tokenizers import Tokenizer
    b = Batcher(Tokenizer.from_file(tok_path), seed, exclude, 400)
    while True:
        ids, lab = b(batch)
        q.put((ids.numpy(), lab.numpy()))


def params_digest(model):
    """sha256 of every parameter's bytes in name order (16 hex digits): logged
    during training so two runs can be compared step by step."""
    h = hashlib.sha256()
    for k, p in model.named_parameters():
        h.update(k.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shared_total(path, mine):
    """The step count of concurrent runs: the first to decide links its choice
    into place atomically; the others read it."""
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{mine}\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return int(open(path).read())


def greedy(model, tok, prompts, device, max_new=160, stop=(402, 400)):
    """Greedy decoding without a cache, left-padded batches (padding is masked in
    both attention kinds). Returns the completion text of each prompt."""
    enc = [tok.encode(p).ids for p in prompts]
    out = [None] * len(enc)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    bs = 256
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        L = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), L), 400, dtype=torch.long)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, L - len(enc[i]):] = torch.tensor(enc[i])
            mask[r, L - len(enc[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        gen = [[] for _ in idx]
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        for _ in range(max_new):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
            logits[:, tok.get_vocab_size():] = -float("inf")
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, 400), nxt)
            for r, t in enumerate(nxt.tolist()):
                if not done[r]:
                    gen[r].append(t)
            done |= (nxt == stop[0]) | (nxt == stop[1])
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
            if bool(done.all()):
                break
        for r, i in enumerate(idx):
            out[i] = (tok.decode(gen[r], skip_special_tokens=False), gen[r])
    return out


def parse_reply(text):
    """(reasoning, answer_text) from a completion in thinking mode, or
    (None, answer) when there is no </think>."""
    text = text.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    if "</think>" in text:
        r, a = text.split("</think>", 1)
        return r.strip(), a.strip()
    return None, text.strip()


def answer_value(answer):
    """The number after the last '=' of 'A op B = C', or None."""
    if "=" not in answer:
        return None
    s = answer.rsplit("=", 1)[1].strip()
    try:
        return int(s)
    except ValueError:
        return None


def evaluate(model, tok, device, problems, log):
    res = {}
    for thinking in (True, False):
        prompts = [demo_task.render_prompt([{"role": "user", "content": q}], thinking)
                   for _, _, _, q, _ in problems]
        outs = greedy(model, tok, prompts, device)
        ok = 0
        rtoks = atoks = 0
        by_digits = {}
        for (op, a, b, q, want), (text, ids) in zip(problems, outs):
            r, ans = parse_reply(text)
            good = answer_value(ans) == want
            ok += good
            if "</think>" in text:
                cut = ids.index(404) if 404 in ids else len(ids)
                rtoks += cut
                atoks += len(ids) - cut - 1
            else:
                atoks += len(ids)
            nd = max(len(str(a)), len(str(b)))
            t = by_digits.setdefault(nd, [0, 0])
            t[0] += good
            t[1] += 1
        n = len(problems)
        res["think" if thinking else "nothink"] = ok / n
        log(f"eval {'think' if thinking else 'no-think'}: accuracy {ok}/{n} = {100 * ok / n:.1f}% "
            f"mean reasoning tokens {rtoks / n:.1f} mean answer tokens {atoks / n:.1f} "
            f"by max digits " + " ".join(f"{d}:{v[0]}/{v[1]}" for d, v in sorted(by_digits.items())))
        for (op, a, b, q, want), (text, _) in list(zip(problems, outs))[:2]:
            log("sample: " + json.dumps(q) + " -> " + json.dumps(text))
    return res


def save_checkpoint(model, cfg, tok_dir, out):
    """Writes the text-only Qwen3.5 layout: BF16 tensors except A_log and the GDN
    output norm, which Qwen3.5 keeps in F32; tied lm_head not stored."""
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        keep32 = k.endswith(".A_log") or k.endswith("linear_attn.norm.weight")
        sd[k] = v.detach().to("cpu", torch.float32 if keep32 else torch.bfloat16).contiguous()
    tmp = os.path.join(out, "model.safetensors.tmp")
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    c = cfg.to_dict()
    for k in ("_name_or_path", "id2label", "label2id", "chunk_size_feed_forward",
              "is_encoder_decoder", "output_attentions", "output_hidden_states",
              "problem_type", "return_dict"):
        c.pop(k, None)
    c["architectures"] = ["Qwen3_5ForCausalLM"]
    c["dtype"] = "bfloat16"
    c.pop("torch_dtype", None)
    json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2, sort_keys=True)
    json.dump({"bos_token_id": None, "eos_token_id": [402, 400], "pad_token_id": 400,
               "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95},
              open(os.path.join(out, "generation_config.json"), "w"), indent=2)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    tj = json.load(open(os.path.join(out, "tokenizer.json")))
    json.dump({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
               "model_max_length": 2048,
               "added_tokens_decoder": {str(a["id"]): {"content": a["content"],
                                                       "special": a["special"]}
                                        for a in tj["added_tokens"]}},
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    # the official Qwen3.5 (4B+) template, copied from the fixtures, so qchat's
    # chat renderer recognises it
    tpl = os.path.join(HERE, "demo_chat_template.jinja")
    shutil.copy(tpl, os.path.join(out, "chat_template.jinja"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=0, help="0: fit --budget-s")
    ap.add_argument("--budget-s", type=float, default=300)
    ap.add_argument("--max-steps", type=int, default=1302, help="cap of --steps 0")
    ap.add_argument("--steps-file", default="", help="share the --steps 0 choice")
    ap.add_argument("--nondeterministic-ok", action="store_true",
                    help="warn instead of failing on an op without a deterministic kernel")
    ap.add_argument("--digest-every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train_log.txt"), "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    import transformers
    from transformers import Qwen3_5ForCausalLM
    from tokenizers import Tokenizer
    log(f"torch {torch.__version__} transformers {transformers.__version__} device {args.device} "
        + (torch.cuda.get_device_name() if args.device == "cuda" else ""))
    log("args " + json.dumps(vars(args)))

    tok_dir = os.path.join(args.out, "_tok")
    os.makedirs(tok_dir, exist_ok=True)
    t = make_demo_tokenizer.build()
    t.save(os.path.join(tok_dir, "tokenizer.json"))
    j = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    for a in j["added_tokens"]:
        a["special"] = a["content"] in make_demo_tokenizer.SPECIAL
        a["normalized"] = a["content"] not in make_demo_tokenizer.SPECIAL
    json.dump(j, open(os.path.join(tok_dir, "tokenizer.json"), "w"), ensure_ascii=False, indent=2)
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    ids = {a["content"]: a["id"] for a in j["added_tokens"]}
    assert ids["<|endoftext|>"] == 400 and ids["<|im_end|>"] == 402 and ids["</think>"] == 404, ids

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # CPU and every CUDA device
    torch.use_deterministic_algorithms(True, warn_only=args.nondeterministic_ok)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    log(f"deterministic: algorithms {'warn-only' if args.nondeterministic_ok else 'strict'}, "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}, eager attention, "
        f"GDN torch path (fla/causal_conv1d blocked)")
    problems = demo_task.heldout(args.eval_n)
    exclude = demo_task.heldout_keys(args.eval_n)
    # batches come from a worker process started before CUDA is initialised,
    # so generating them overlaps the GPU steps
    import multiprocessing as mp
    bq = mp.get_context("fork").Queue(maxsize=8)
    worker = mp.get_context("fork").Process(
        target=_producer, daemon=True,
        args=(os.path.join(tok_dir, "tokenizer.json"), args.seed + 1, exclude, args.batch, bq))
    worker.start()
    cfg = make_config()
    cfg._attn_implementation = "eager"  # deterministic backward (see the docstring)
    model = Qwen3_5ForCausalLM(cfg).to(args.device)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    nparam = sum(p.numel() for p in model.parameters())
    log(f"parameters {nparam} ({nparam / 1e6:.2f} M)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    total = args.steps if args.steps > 0 else None
    t0 = time.time()
    step = 0
    ema = None
    t_probe = None
    # the step count is chosen before warm-up ends, so that the learning rate of
    # every step is the one a --steps N run gives it
    assert total is not None or args.warmup > 80, "--steps 0 needs --warmup > 80"
    while total is None or step < total:
        if total is None and step == 20:
            t_probe = time.time()
        if total is None and step == 80:
            per = (time.time() - t_probe) / 60
            mine = max(step + 1, min(args.max_steps, int(args.budget_s / per)))
            total = shared_total(args.steps_file, mine) if args.steps_file else mine
            log(f"measured {per * 1000:.1f} ms/step: training for {total} steps"
                + (f" (this run chose {mine})" if total != mine else ""))
        lr_scale = min(1.0, (step + 1) / args.warmup)
        if total is not None and step >= args.warmup:
            frac = (step - args.warmup) / max(1, total - args.warmup)
            lr_scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_scale
        ids_np, lab_np = bq.get()
        ids = torch.from_numpy(ids_np).to(args.device, non_blocking=True)
        lab = torch.from_numpy(lab_np).to(args.device, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            loss = model(input_ids=ids, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        li = loss.item()
        ema = li if ema is None else 0.98 * ema + 0.02 * li
        step += 1
        if step % 50 == 0 or step == 1:
            log(f"step {step} loss {li:.4f} ema {ema:.4f} lr {args.lr * lr_scale:.2e} "
                f"t {time.time() - t0:.0f}s")
        if args.digest_every and (step % args.digest_every == 0 or step == 1):
            log(f"step {step} params {params_digest(model)}")
    worker.terminate()
    log(f"trained {step} steps in {time.time() - t0:.0f}s; reproduce with --steps {step}")

    # Evaluate the weights as shipped: rounded to BF16 (A_log / GDN norm F32),
    # computed in float32 like qchat's CPU engine.
    model.eval()
    with torch.no_grad():
        for k, p in model.named_parameters():
            if not (k.endswith(".A_log") or k.endswith("linear_attn.norm.weight")):
                p.copy_(p.to(torch.bfloat16).float())
    save_checkpoint(model, cfg, tok_dir, args.out)
    shutil.rmtree(tok_dir)
    log(f"model.safetensors sha256 {file_sha256(os.path.join(args.out, 'model.safetensors'))}")
    evaluate(model, tok, args.device, problems, log)
    log(f"total time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
