"""make_demo_tokenizer.py — trains the demo model's byte-level BPE tokenizer.

Same pipeline as Qwen3.5's tokenizer.json: NFC normaliser, the Qwen3.5 split
regex (letters with marks, single digits), byte-level mapping, byte-level
decoder, no BOS; then the Qwen chat tokens as added tokens right after the BPE
vocabulary. Trained on text drawn from demo_task.py, so the merges cover the
task's words and single digits stay single tokens (the regex isolates digits).

Usage: python3 tools/make_demo_tokenizer.py OUT_DIR  (writes OUT_DIR/tokenizer.json)
"""
import json
import os
import random
import re
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_task  # noqa: E402

QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_VOCAB = 400  # 256 bytes + merges
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
         "<tool_call>", "</tool_call>"]
SPECIAL = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
SEED = 1234


def corpus(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        p, c = demo_task.make_example(rng)
        # the added tokens are matched before the regex, so the BPE sees the
        # text between them as separate pieces
        for piece in re.split("|".join(re.escape(t) for t in ADDED), p + c):
            if piece:
                yield piece
    # greetings, refusals and templates appear in full at least once
    for t in (demo_task.GREETINGS + demo_task.OTHER + demo_task.SYSTEMS
              + [demo_task.HELLO_REPLY, demo_task.OTHER_REPLY]):
        yield t


def build():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN35_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(20000, SEED), trainer=trainer)
    from tokenizers import AddedToken
    for t in ADDED:
        tok.add_tokens([AddedToken(t, special=t in SPECIAL, normalized=t not in SPECIAL)])
    return tok


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tok = build()
    path = os.path.join(out, "tokenizer.json")
    tok.save(path)
    # tokenizers writes added tokens with special=False for plain add_tokens; mark
    # the three Qwen special tokens as the real file does.
    j = json.load(open(path))
    for a in j["added_tokens"]:
        a["special"] = a["content"] in SPECIAL
        a["normalized"] = a["content"] not in SPECIAL
    json.dump(j, open(path, "w"), ensure_ascii=False, indent=2)
    ids = {a["content"]: a["id"] for a in j["added_tokens"]}
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
