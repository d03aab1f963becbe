"""Time ``compute_stats`` on synthetic conversations (default 100k, plus 2k held-out).

Each conversation has a system prompt, one or two user/assistant exchanges and about 150 words
drawn from a Zipf-like vocabulary of 20k words; 1 % are exact copies and 1 % near copies (one
word changed) of earlier records, and 1 % of the held-out prompts come from training.

    python bench/stats_speed.py [--n 100000] [--heldout 2000]

Prints the seconds for building the records (not counted) and for compute_stats.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sftlab.data.conversation import Conversation, Message, Origin
from sftlab.data.stats import DEFAULT_NUM_PERM, compute_stats


def make(n: int, heldout: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    words = vocab[rng.choice(len(vocab), size=(n + heldout) * 160, p=p)].tolist()
    pos = 0

    def text(k: int) -> str:
        nonlocal pos
        pos += k
        return " ".join(words[pos - k:pos])

    convs = []
    for i in range(n + heldout):
        r = rng.random()
        if i < n and i > 100 and r < 0.01:
            src = convs[int(rng.integers(0, i))]
            convs.append(Conversation(src.messages, id=f"r{i}", task=src.task, origin=Origin("train.jsonl", i + 1)))
            continue
        if i < n and i > 100 and r < 0.02:
            src = convs[int(rng.integers(0, i))]
            msgs = list(src.messages)
            w = msgs[-1].content.split()
            w[len(w) // 2] = "changed"
            msgs[-1] = Message("assistant", " ".join(w))
            convs.append(Conversation(tuple(msgs), id=f"r{i}", task=src.task, origin=Origin("train.jsonl", i + 1)))
            continue
        msgs = [Message("system", "You are a helpful assistant.")]
        for _ in range(1 + int(r < 0.3)):
            msgs += [Message("user", text(int(rng.integers(10, 60)))),
                     Message("assistant", text(int(rng.integers(40, 120))))]
        expected = "refuse" if r > 0.95 else ("comply" if r > 0.9 else None)
        convs.append(Conversation(tuple(msgs), id=f"r{i}", task=f"task{int(rng.zipf(1.5)) % 40}",
                                  policy_category="weapons" if expected else None, expected=expected,
                                  origin=Origin("train.jsonl", i + 1)))
    train, held = convs[:n], convs[n:]
    for k in range(0, len(held), 100):  # 1 % of held-out prompts copied from training
        held[k] = Conversation(train[k * 7 % n].messages, id=f"h{k}")
    return train, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--heldout", type=int, default=2_000)
    ap.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM)
    args = ap.parse_args()
    t0 = time.perf_counter()
    train, held = make(args.n, args.heldout)
    t1 = time.perf_counter()
    stats = compute_stats(train, heldout=held, num_perm=args.num_perm)
    t2 = time.perf_counter()
    print(f"built {len(train)} + {len(held)} records in {t1 - t0:.1f} s")
    print(f"exact dup {stats['duplicates']['exact']['records']}, near dup "
          f"{stats['duplicates']['near']['records']}, leaked {stats['leakage']['leaked']}")
    print(f"compute_stats: {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
