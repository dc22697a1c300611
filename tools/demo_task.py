"""demo_task.py — the synthetic task of qchat's embedded demo model.

Whole-number addition and subtraction (operands of 1 to 5 digits), answered after
a short visible working-out inside <think> ... </think>: one line per column,
right to left, with the carry or borrow written out, then the digits read back.
The same questions can be asked without thinking (the prompt ends with
"<think>\n\n</think>\n\n"), where the model must answer in one go — which it does
far worse on long numbers, the point of the demo.

Every example is rendered exactly as the official Qwen3.5 chat template renders it
(qchat's chat renderer reproduces that template), so the C engine sees the same
token stream at inference as the model saw in training.

Used by tools/make_demo_tokenizer.py, tools/train_demo.py and to write the held-out
set demo/heldout.tsv that tools/demo_eval.sh feeds to `qchat run`.
"""

import random

MAX_DIGITS = 5

# User phrasings: {a} {b} are the operands in the order the question names them.
ADD_TEMPLATES = [
    "What is {a} + {b}?", "What is {a} plus {b}?", "{a} + {b}", "{a}+{b}", "{a} + {b} =",
    "Compute {a} + {b}.", "Calculate {a} + {b}", "Add {a} and {b}.", "What's {a} + {b}?",
    "How much is {a} plus {b}?", "Please add {a} and {b}.", "what is {a}+{b}",
]
SUB_TEMPLATES = [
    "What is {a} - {b}?", "What is {a} minus {b}?", "{a} - {b}", "{a}-{b}", "{a} - {b} =",
    "Compute {a} - {b}.", "Calculate {a} - {b}", "Subtract {b} from {a}.", "What's {a} - {b}?",
    "How much is {a} minus {b}?", "Please subtract {b} from {a}.", "what is {a}-{b}",
]
GREETINGS = ["hi", "Hi", "hello", "Hello!", "hey", "Hi there", "Good morning", "Who are you?",
             "who are you", "What can you do?", "help", "Help", "What are you?", "hello?"]
OTHER = ["Tell me a joke.", "What is the capital of France?", "Write a poem", "How are you?",
         "What time is it?", "Explain quantum physics.", "Translate hello to French",
         "What is the meaning of life?", "Can you write code?", "What is 2 times 3?",
         "Divide 10 by 2", "What is the weather today?", "Thanks!", "thank you", "ok",
         "Tell me about yourself", "Is this thing on?", "What is your name?"]
SYSTEMS = ["You are a helpful assistant.", "You are qchat's demo model.", "Be concise."]

HELLO_REPLY = ("Hello! I am qchat's tiny demo model. I add and subtract whole numbers, "
               "for example: What is 4821 + 397?")
OTHER_REPLY = ("I only know how to add and subtract whole numbers. "
               "Try: What is 4821 + 397?")


def rand_operand(rng):
    nd = rng.randint(1, MAX_DIGITS)
    lo = 0 if nd == 1 else 10 ** (nd - 1)
    return rng.randint(lo, 10 ** nd - 1)


def digits_rev(x, n):
    """The n lowest digits of x, least significant first."""
    return [(x // 10 ** i) % 10 for i in range(n)]


def reason_add(a, b):
    n = max(len(str(a)), len(str(b)))
    da, db = digits_rev(a, n), digits_rev(b, n)
    lines = [f"{a} + {b}"]
    carry = 0
    for i in range(n):
        s = da[i] + db[i] + carry
        expr = f"{da[i]}+{db[i]}" + ("+1" if carry else "")
        carry = s // 10
        lines.append(f"{expr}={s}" + (" carry" if carry else ""))
    if carry:
        lines.append("last carry 1")
    lines.append(f"answer {a + b}")
    return "\n".join(lines)


def reason_sub(a, b):
    lines = [f"{a} - {b}"]
    x, y = a, b
    if a < b:
        lines.append(f"{b} > {a}, swap")
        x, y = b, a
    n = len(str(x))
    dx, dy = digits_rev(x, n), digits_rev(y, n)
    borrow = 0
    for i in range(n):
        d = dx[i] - dy[i] - borrow
        top = dx[i]
        nb = 0
        if d < 0:
            d += 10
            top += 10
            nb = 1
        expr = f"{top}-{dy[i]}" + ("-1" if borrow else "")
        lines.append(f"{expr}={d}" + (" borrow" if nb else ""))
        borrow = nb
    lines.append(f"answer {a - b}")
    return "\n".join(lines)


def answer_line(op, a, b):
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}"


def render_prompt(messages, thinking):
    """The official Qwen3.5 template (4B+ variant) for plain user/assistant/system
    turns, with the generation prompt. Earlier assistant turns carry no reasoning."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append(f"<|im_start|>system\n{m['content']}<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    out.append("<think>\n" if thinking else "<think>\n\n</think>\n\n")
    return "".join(out)


def completion(reasoning, answer, thinking):
    """What the model writes after the generation prompt, end token included."""
    if thinking:
        return f"{reasoning}\n</think>\n\n{answer}<|im_end|>"
    return f"{answer}<|im_end|>"


def make_problem(rng):
    """(op, a, b, question) with the operands in the question's order."""
    op = "+" if rng.random() < 0.5 else "-"
    a, b = rand_operand(rng), rand_operand(rng)
    if op == "-" and a < b and rng.random() < 0.6:
        a, b = b, a  # mostly non-negative results; negative ones still occur
    tpl = rng.choice(ADD_TEMPLATES if op == "+" else SUB_TEMPLATES)
    return op, a, b, tpl.format(a=a, b=b)


def solve(op, a, b):
    return (reason_add(a, b) if op == "+" else reason_sub(a, b)), answer_line(op, a, b)


def make_turn(rng, exclude=None):
    """One user question and the assistant's (reasoning, answer)."""
    r = rng.random()
    if r < 0.03:
        q = rng.choice(GREETINGS)
        return q, "The user greets me or asks what I do.", HELLO_REPLY
    if r < 0.05:
        q = rng.choice(OTHER)
        return q, "This is not an addition or subtraction of whole numbers.", OTHER_REPLY
    while True:
        op, a, b, q = make_problem(rng)
        if exclude is None or (op, a, b) not in exclude:
            break
    reasoning, answer = solve(op, a, b)
    return q, reasoning, answer


def make_example(rng, exclude=None):
    """(prompt, completion): sometimes a system turn, sometimes an earlier exchange
    in the history, thinking on 75 % of the time."""
    messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.2:
        q0, _, a0 = make_turn(rng, exclude)
        messages += [{"role": "user", "content": q0}, {"role": "assistant", "content": a0}]
    q, reasoning, answer = make_turn(rng, exclude)
    messages.append({"role": "user", "content": q})
    thinking = rng.random() < 0.75
    return render_prompt(messages, thinking), completion(reasoning, answer, thinking)


def heldout(n=200, seed=777):
    """The held-out problems: (op, a, b, question, expected_answer_value), drawn
    like the training problems (operand digit counts uniform in 1..5) from their own
    seed; training excludes every one of them."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        op, a, b, q = make_problem(rng)
        if (op, a, b) in seen:
            continue
        seen.add((op, a, b))
        out.append((op, a, b, q, a + b if op == "+" else a - b))
    return out


def heldout_keys(n=200, seed=777):
    return {(op, a, b) for op, a, b, _, _ in heldout(n, seed)}


if __name__ == "__main__":
    # python3 tools/demo_task.py > demo/heldout.tsv : the held-out problems that
    # tools/demo_eval.sh and tests/t_demo.sh read (question TAB expected value).
    for _, _, _, q, want in heldout():
        print(f"{q}\t{want}")
