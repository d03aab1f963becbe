"""The demo's instruction suite: checkable tasks, refusals and benign look-alikes, made by code.

Every record comes from a generator *template* (a phrasing with slots) filled from small
tables with a seeded ``random.Random``. Each family or policy category holds back its last
template(s) for evaluation, so held-out prompts are new phrasings, not re-worded copies of
training ones (DESIGN.md invariant 7). Task answers are short and exact; refusals follow the
built-in policy's style (``sftlab/demo/policy.yaml``): brief, name what is declined and why,
offer a safe alternative about the same subject; each is written for its request
(``sftlab.demo.boundary``, which also holds the benign look-alikes that share the harmful
requests' words and phrasings). No record contains a harmful answer: harmful prompts get
refusals only.

Example::

    >>> s = build_suite(seed=0, n_train=40, n_heldout=24)
    >>> len(s.train), len(s.heldout_prompts)
    (40, 24)
    >>> sorted({r["slice"] for r in s.heldout_prompts})
    ['benign_contrast', 'refusal', 'task']
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from sftlab.data.formats import KNOWN_METADATA
from sftlab.demo import public
from sftlab.demo.boundary import (ACT_TEMPLATES, CONTRASTS, HARMFUL, SUBJECT_TEMPLATES, Harmful, refusal,
                                  refusal_text)
from sftlab.demo.verbs import PEOPLE, VERBS, benign_acts, person_act, reasons
from sftlab.files import atomic_file

SOURCE = "sftlab.demo.suite"
SLICE_SHARES = {"task": 0.25, "refusal": 0.25, "benign_contrast": 0.45, "multi_turn": 0.05}
"""Share of each slice in the training records (multi-turn: two exchanges in one record).
Benign contrasts outnumber refusals (with fewer, a small model learns to refuse any unfamiliar
phrasing or trigger word: docs/demo_recipe.md); the refusal and contrast data themselves are
in ``sftlab.demo.boundary``."""
HELDOUT_SHARES = {"task": 0.5, "refusal": 0.25, "benign_contrast": 0.25}
"""Share of each slice in the held-out records."""


def demo_policy_path() -> Path:
    """The path of the built-in policy file ``sftlab/demo/policy.yaml``."""
    return Path(str(resources.files("sftlab.demo") / "policy.yaml"))


@dataclass(frozen=True)
class Item:
    """One generated exchange before it becomes a record."""
    prompt: str
    response: str
    slice: str
    task: str
    template: str
    """``<family or category>/<template index>``."""
    expected: str | None = None
    policy_category: str | None = None
    answer: str | None = None
    answer_type: str | None = None
    params: dict[str, Any] | None = None

    def meta(self) -> dict[str, Any]:
        out = {"task": self.task, "slice": self.slice, "template": self.template, "source": SOURCE}
        for key in ("expected", "policy_category", "answer", "answer_type", "params"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class Generator:
    """A task family or a (harmful or benign) policy category: phrasings plus a filler."""
    name: str
    slice: str
    templates: tuple[str, ...]
    heldout_templates: int
    """How many of the last templates are reserved for evaluation."""
    fill: Callable[[random.Random], tuple[dict[str, Any], str]]
    """``rng -> (slots, response)``; the slots fill the template."""
    answer_type: str | None = None
    expected: str | None = None
    policy_category: str | None = None
    weight: int = 1
    """How many turns this generator takes in its slice's rotation (1 = an equal share)."""

    def template_indices(self, heldout: bool) -> range:
        cut = len(self.templates) - self.heldout_templates
        return range(cut, len(self.templates)) if heldout else range(cut)

    def make(self, rng: random.Random, heldout: bool) -> Item:
        index = rng.choice(self.template_indices(heldout))
        slots, response = self.fill(rng)
        return Item(prompt=self.templates[index].format(**slots), response=response,
                     slice=self.slice, task=self.name if self.slice == "task" else self.slice,
                     template=f"{self.name}/{index}", expected=self.expected,
                     policy_category=self.policy_category,
                     answer=response if self.answer_type else None,
                     answer_type=self.answer_type, params=slots if self.answer_type else None)


def generators() -> dict[str, list[Generator]]:
    """Every generator, grouped by slice (``task``, ``refusal``, ``benign_contrast``)."""
    tasks = [Generator(f.name, "task", f.templates, 1, f.fill, answer_type=f.answer_type)
             for f in FAMILIES]
    refusals = [Generator(h.category, "refusal", h.templates, 2, _refusal(h),
                          expected="refuse", policy_category=h.category) for h in HARMFUL]
    refusals += [Generator(f"{category}_people", "refusal", ACT_TEMPLATES, 2, _person_refusal(verbs),
                           expected="refuse", policy_category=category, weight=weight)
                 for category, verbs, weight in _verbs_by_category()]
    contrasts = [Generator(c.category, "benign_contrast", c.templates, 2, _table(c.answers),
                           expected="comply", policy_category=c.category) for c in CONTRASTS]
    contrasts.append(Generator("trigger_verbs", "benign_contrast", SUBJECT_TEMPLATES, 2, _table(benign_acts()),
                               expected="comply", policy_category="trigger_verbs", weight=TRIGGER_VERB_WEIGHT))
    refusals.append(PublicGenerator("public_refusals", "refusal", ("{x}", "{x}"), 1, _no_fill, expected="refuse",
                                    weight=PUBLIC_REFUSAL_WEIGHT, file="refusal_prompts"))
    contrasts.append(PublicGenerator("public_benign", "benign_contrast", ("{x}", "{x}"), 1, _no_fill, expected="comply",
                                     weight=PUBLIC_BENIGN_WEIGHT, file="benign_prompts"))
    return {"task": tasks, "refusal": refusals, "benign_contrast": contrasts}


PUBLIC_REFUSAL_WEIGHT = 14
"""Turns of the public harmful requests in the refusal rotation: as many as all generated
categories together, so half the refusals answer requests people wrote."""
PUBLIC_BENIGN_WEIGHT = 11
"""Turns of the public benign-but-edgy requests in the benign rotation (a third of it)."""


def _no_fill(rng: random.Random) -> tuple[dict[str, Any], str]:
    raise NotImplementedError  # PublicGenerator.make draws whole prompts instead


@dataclass(frozen=True)
class PublicGenerator(Generator):
    """Prompts from a public collection (``sftlab.demo.public``): training draws from its
    training clusters (template index 0), evaluation from its held-out ones (index 1); a refusal
    is written for the request, a benign request keeps its collection's answer (after
    ``COMPLY_OPENER``)."""
    file: str = ""

    def make(self, rng: random.Random, heldout: bool) -> Item:
        train, held = public.split(self.file)
        row = rng.choice(held if heldout else train)
        response = (public.public_refusal(row.prompt, row.category, rng) if self.expected == "refuse"
                    else COMPLY_OPENER + (row.answer or ""))
        return Item(prompt=row.prompt, response=response, slice=self.slice, task=self.slice,
                    template=f"{self.name}/{int(heldout)}", expected=self.expected,
                    policy_category=row.category)


TRIGGER_VERB_WEIGHT = 8
"""Turns of the benign trigger-verb acts in the benign rotation (each other category has 1)."""
PERSON_ACT_WEIGHT = 4
"""Turns of violent acts aimed at a person in the refusal rotation (each other category has 1)."""


def _verbs_by_category():
    by: dict[str, list] = {}
    for v in VERBS:
        by.setdefault(v.category, []).append(v)
    return [(c, tuple(vs), PERSON_ACT_WEIGHT if c == "violence" else 1) for c, vs in sorted(by.items())]


def _person_refusal(verbs):
    def fill(rng: random.Random) -> tuple[dict[str, Any], str]:
        verb = rng.choice(verbs)
        person = rng.choice(PEOPLE)
        x, what, alt = person_act(verb, person, rng)
        return {"x": x}, refusal_text(what, reasons(verb, person[1]), alt, rng)
    return fill


def _refusal(h: Harmful):
    def fill(rng: random.Random) -> tuple[dict[str, Any], str]:
        act = rng.choice(h.acts)
        return {"x": act.x}, refusal(h, act, rng)
    return fill


COMPLY_OPENER = "Sure! "
"""How every answer to a benign look-alike begins. A refusal's first token is nearly always "I";
an answer's first token is whatever its content starts with, so the answer side's probability is
spread over many first tokens and greedy decoding picks "I" even where the model gives answering
the larger probability (measured: docs/demo_recipe.md). One opener puts the two sides on equal
terms at the first token. It costs separation there (first-token AUC on XSTest 0.65 with it, 0.79
without, 60 steps), but without it greedy decoding refuses most edgy benign requests too
(XSTest safe 0.62); no variant measured so far passes both sides."""


def _table(answers: dict[str, str]):
    def fill(rng: random.Random) -> tuple[dict[str, Any], str]:
        subject = rng.choice(sorted(answers))
        return {"s": subject}, COMPLY_OPENER + answers[subject]
    return fill


@dataclass(frozen=True)
class Suite:
    train: list[dict]
    """OpenAI ``messages`` records with task, slice, expected, policy_category, answer fields."""
    heldout_conversations: list[dict]
    """The held-out prompts as records with their reference responses (for eval loss)."""
    heldout_prompts: list[dict]
    """Rows of ``sftlab eval``'s prompt JSONL: id, prompt, slice, task, expected, answer,
    answer_type, policy_category, template."""
    seed: int

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``train.jsonl``, ``heldout.jsonl`` and ``heldout_prompts.jsonl``; return the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, rows in (("train", self.train), ("heldout", self.heldout_conversations),
                           ("heldout_prompts", self.heldout_prompts)):
            paths[name] = directory / f"{name}.jsonl"
            write_jsonl(rows if name == "heldout_prompts" else [_with_meta(r) for r in rows], paths[name])
        return paths


def _with_meta(record: dict) -> dict:
    """A conversation record as written: the suite's own fields (``template``, ``answer``, ...) under
    ``meta``, where sftlab's loader keeps them as metadata."""
    own = {k: v for k, v in record.items() if k not in KNOWN_METADATA and k != "messages"}
    return {k: v for k, v in record.items() if k not in own} | ({"meta": own} if own else {})


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> None:
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_suite(seed: int = 0, n_train: int = 600, n_heldout: int = 96) -> Suite:
    """The seeded suite: ``n_train`` training records and ``n_heldout`` held-out prompts.

    Training records use only training templates; held-out ones only held-out templates.
    The same seed gives the same records, in the same order. Held-out prompts are unique (a
    table too small for ``n_heldout`` raises ``ValueError``); training prompts repeat only once
    a generator's table is used up (30 training prompts per refusal category, 36 per contrast).
    """
    if n_train < 0 or n_heldout < 0:
        raise ValueError(f"n_train and n_heldout must be >= 0, got {n_train} and {n_heldout}")
    gens = generators()
    rng = random.Random(f"sftlab-suite-{seed}")
    train_counts = _split_counts(n_train, SLICE_SHARES)
    train = [_record(items, f"suite{seed}-train-{i:05d}")
             for i, items in enumerate(_train_items(gens, train_counts, rng))]
    heldout_items = _unique_items(gens, _split_counts(n_heldout, HELDOUT_SHARES), rng, heldout=True)
    heldout_conversations = [_record([it], f"suite{seed}-heldout-{i:05d}")
                             for i, it in enumerate(heldout_items)]
    heldout_prompts = [_prompt_row(it, f"suite{seed}-heldout-{i:05d}")
                       for i, it in enumerate(heldout_items)]
    return Suite(train, heldout_conversations, heldout_prompts, seed)


def _split_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of ``n`` by ``shares`` (so the counts sum to ``n``)."""
    raw = {k: n * v for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _unique_items(gens: dict[str, list[Generator]], counts: dict[str, int],
                  rng: random.Random, heldout: bool) -> list[Item]:
    """``counts[slice]`` items per slice, cycling over the slice's generators. Prompts are
    unique while the tables last; training repeats prompts beyond that, held-out raises."""
    items: list[Item] = []
    for slice_name, n in counts.items():
        if slice_name == "multi_turn" or n == 0:
            continue
        seen: set[str] = set()
        pool = _rotation(gens[slice_name])
        for k in range(n):
            gen = pool[k % len(pool)]
            for _ in range(200):
                item = gen.make(rng, heldout)
                if item.prompt not in seen:
                    break
            else:  # the generator's table is used up: training repeats, evaluation must not
                if not heldout:
                    items.append(item)
                    continue
                raise ValueError(f"{gen.name}: could not make {n} unique {slice_name} prompts "
                                 f"from its {'held-out' if heldout else 'training'} templates; "
                                 "ask for fewer records")
            seen.add(item.prompt)
            items.append(item)
    rng.shuffle(items)
    return items


def _rotation(pool: list[Generator]) -> list[Generator]:
    """Each generator ``weight`` times, spread evenly (a short run still sees every generator)."""
    slots = [((j + 0.5) / g.weight, i, g) for i, g in enumerate(pool) for j in range(g.weight)]
    return [g for _, _, g in sorted(slots, key=lambda s: (s[0], s[1]))]


def _train_items(gens: dict[str, list[Generator]], counts: dict[str, int],
                 rng: random.Random) -> list[list[Item]]:
    """Single exchanges plus multi-turn pairs (a task, then a task, a harmful request or a
    benign look-alike)."""
    singles = [[it] for it in _unique_items(gens, counts, rng, heldout=False)]
    pairs = []
    for _ in range(counts.get("multi_turn", 0)):
        first = rng.choice(gens["task"]).make(rng, heldout=False)
        second_pool = gens[rng.choice(("task", "refusal", "benign_contrast"))]
        pairs.append([first, rng.choice(second_pool).make(rng, heldout=False)])
    out = singles + pairs
    rng.shuffle(out)
    return out


def _record(items: list[Item], record_id: str) -> dict:
    messages = []
    for it in items:
        messages += [{"role": "user", "content": it.prompt},
                     {"role": "assistant", "content": it.response}]
    last = items[-1]
    meta = last.meta()
    if len(items) > 1:
        meta.update(slice="multi_turn", template=[it.template for it in items])
    return {"id": record_id, "messages": messages, **meta}


def _prompt_row(item: Item, row_id: str) -> dict:
    return {"id": row_id, "prompt": item.prompt, "slice": item.slice, "task": item.task,
            "expected": item.expected, "answer": item.answer, "answer_type": item.answer_type,
            "policy_category": item.policy_category, "template": item.template}


# ----------------------------------------------------------------------------------------------
# Task families: phrasings (the last one is held out) and a filler returning (slots, answer).

@dataclass(frozen=True)
class Family:
    name: str
    templates: tuple[str, ...]
    fill: Callable[[random.Random], tuple[dict[str, Any], str]]
    answer_type: str
    """``numeric`` (the last number of the response) or ``exact`` (the normalised response or
    its final line/sentence), as ``sftlab.evaluation.answers.check_answer`` reads them."""


WORDS = ("apple", "banana", "cherry", "garden", "window", "pencil", "rocket", "silver", "planet",
         "forest", "button", "candle", "dragon", "kitten", "lemon", "mirror", "orange", "pepper",
         "rabbit", "summer", "tiger", "violin", "wagon", "yellow", "zebra", "anchor", "bottle",
         "castle", "desert", "engine", "falcon", "guitar", "harbor", "island", "jacket", "ladder",
         "marble", "needle", "ocean", "parrot")
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
            "Germany": "Berlin", "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra",
            "Kenya": "Nairobi", "Norway": "Oslo", "Peru": "Lima", "Greece": "Athens",
            "Portugal": "Lisbon", "Russia": "Moscow", "China": "Beijing", "Ireland": "Dublin",
            "Sweden": "Stockholm", "Poland": "Warsaw", "Thailand": "Bangkok", "Austria": "Vienna"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad",
             "light": "dark", "open": "closed", "early": "late", "full": "empty", "wet": "dry",
             "hard": "soft", "strong": "weak", "rich": "poor", "loud": "quiet", "day": "night",
             "push": "pull", "win": "lose", "above": "below", "buy": "sell", "first": "last"}
PHRASES = ("good morning", "hello world", "open the door", "see you soon", "happy birthday",
           "thank you", "blue sky", "green apple", "fresh bread", "red balloon", "quiet night",
           "warm tea")
UNITS = (("kilometers", "meters", 1000), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("meters", "centimeters", 100), ("days", "hours", 24))
SENTENCES = ("The train leaves from platform {n}.", "She bought {n} apples at the market.",
             "Our team scored {n} points last night.", "The hotel has {n} rooms.",
             "He ran {n} kilometers on Sunday.", "The book has {n} chapters.")


def _arithmetic(rng: random.Random) -> tuple[dict[str, Any], str]:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else \
        (rng.randint(10, 60), rng.randint(1, 40))
    a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    return {"a": a, "op": op, "b": b}, str({"+": a + b, "-": a - b, "*": a * b}[op])


def _count_letter(rng: random.Random) -> tuple[dict[str, Any], str]:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    return {"w": word, "c": letter}, str(word.count(letter))


def _sort_words(rng: random.Random) -> tuple[dict[str, Any], str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return {"ws": ", ".join(words)}, ", ".join(sorted(words))


def _word(transform: Callable[[str], str]):
    def fill(rng: random.Random) -> tuple[dict[str, Any], str]:
        word = rng.choice(WORDS)
        return {"w": word}, transform(word)
    return fill


def _capital(rng: random.Random) -> tuple[dict[str, Any], str]:
    country = rng.choice(sorted(CAPITALS))
    return {"country": country}, CAPITALS[country]


def _opposite(rng: random.Random) -> tuple[dict[str, Any], str]:
    word = rng.choice(sorted(OPPOSITES))
    return {"w": word}, OPPOSITES[word]


def _uppercase(rng: random.Random) -> tuple[dict[str, Any], str]:
    phrase = rng.choice(PHRASES)
    return {"p": phrase}, phrase.upper()


def _convert(rng: random.Random) -> tuple[dict[str, Any], str]:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 9)
    return {"n": n, "big": big, "small": small}, str(n * factor)


def _sequence(rng: random.Random) -> tuple[dict[str, Any], str]:
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    terms = [start + step * i for i in range(4)]
    return {"seq": ", ".join(map(str, terms))}, str(start + step * 4)


def _compare(rng: random.Random) -> tuple[dict[str, Any], str]:
    a, b = rng.sample(range(10, 1000), 2)
    return {"a": a, "b": b}, str(max(a, b))


def _extract(rng: random.Random) -> tuple[dict[str, Any], str]:
    n = rng.randint(3, 99)
    return {"sentence": rng.choice(SENTENCES).format(n=n)}, str(n)


FAMILIES = (
    Family("arithmetic", ("What is {a} {op} {b}? Answer with the number only.", "Compute {a} {op} {b}.",
                          "{a} {op} {b} = ?", "Please calculate {a} {op} {b} and give just the result."),
           _arithmetic, "numeric"),
    Family("count_letter", ("How many times does the letter '{c}' appear in '{w}'?",
                            "Count the letter '{c}' in the word '{w}'.",
                            "In '{w}', how many '{c}' are there?",
                            "Tell me the number of '{c}' characters in the word '{w}'."),
           _count_letter, "numeric"),
    Family("sort_words", ("Sort these words alphabetically: {ws}.",
                          "Put these words in alphabetical order: {ws}.",
                          "Alphabetize: {ws}.",
                          "Arrange the following words from A to Z, separated by commas: {ws}."),
           _sort_words, "exact"),
    Family("capital", ("What is the capital of {country}?", "Name the capital city of {country}.",
                       "{country}'s capital is which city?",
                       "Which city is the seat of government of {country}?"), _capital, "exact"),
    Family("unit_conversion", ("How many {small} are in {n} {big}?",
                               "Convert {n} {big} to {small}. Answer with the number only.",
                               "{n} {big} equals how many {small}?",
                               "If something lasts or measures {n} {big}, how many {small} is that?"),
           _convert, "numeric"),
    Family("reverse_word", ("Reverse the letters of the word '{w}'.", "Spell '{w}' backwards.",
                            "Write '{w}' in reverse order.",
                            "What do you get when you read '{w}' from right to left?"),
           _word(lambda w: w[::-1]), "exact"),
    Family("uppercase", ("Write '{p}' in capital letters.", "Convert '{p}' to uppercase.",
                         "Make '{p}' all caps.", "Rewrite the phrase '{p}' using only upper-case letters."),
           _uppercase, "exact"),
    Family("next_in_sequence", ("What number comes next: {seq}, ...?",
                                "Continue the sequence with one number: {seq}",
                                "Find the next term: {seq}",
                                "Here is a pattern of numbers: {seq}. Which number follows?"),
           _sequence, "numeric"),
    Family("compare_numbers", ("Which number is larger, {a} or {b}?", "Which is bigger: {a} or {b}?",
                               "Pick the greater number: {a}, {b}.",
                               "Of the two values {a} and {b}, which one is higher?"),
           _compare, "numeric"),
    Family("extract_number", ("What number appears in this sentence: \"{sentence}\"",
                              "Extract the number from: {sentence}",
                              "Find the number in the text below.\n{sentence}",
                              "Read this and reply with only the number it mentions: {sentence}"),
           _extract, "numeric"),
    Family("word_length", ("How many letters are in the word '{w}'?", "Count the letters in '{w}'.",
                           "What is the length of the word '{w}'?",
                           "The word '{w}' has how many letters?"), _word(lambda w: str(len(w))),
           "numeric"),
    Family("opposite", ("What is the opposite of '{w}'?", "Give the antonym of '{w}'.",
                        "Name a word that means the opposite of '{w}'.",
                        "Which word is the reverse in meaning of '{w}'?"), _opposite, "exact"),
)
