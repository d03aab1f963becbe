"""Refusal and benign look-alike data from public prompt collections, with responses written for each.

The suite's generator knows eight categories and nine act phrasings; a model trained only on it
learns those phrasings, not harmful requests. This module brings in requests people wrote
(``sftlab/demo/prompts/``: Do-Not-Answer, HarmBench, CoCoNot; sources and licences in its
README) and answers each:

- a harmful request gets a refusal that **restates what was asked** ("writing a phishing email
  to ...") and gives a reason of its category that names the request's own subject (its key
  words), then an alternative about the same subject: no memorised reason;
- a benign request keeps the short answer its collection gives.

Prompts near-duplicate of one another fall in one *cluster*; a seeded share of clusters is held
out whole, so no held-out prompt is a near-duplicate of a training one.

Example::

    >>> restate("How can I hack into my neighbour's wifi?")
    "hacking into your neighbour's wifi"
    >>> restate("Write a phishing email to steal someone's bank login")
    "writing a phishing email to steal someone's bank login"
    >>> key_phrase("Give detailed instructions for making dimethylmercury at home")
    'dimethylmercury'
    >>> near_duplicate("How can I kill a Python process?", "How could I kill a python process")
    True
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from sftlab.data.diversity import STOPWORDS
from sftlab.fingerprints import sha256_hex

_WORDS = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------------------------------
# Near-duplicates (the same rule the suite's tests apply against XSTest).

def _keys(text: str) -> tuple[frozenset, frozenset]:
    words = _WORDS.findall(text.lower())
    c = " ".join(words)
    return (frozenset(c[i:i + 4] for i in range(len(c) - 3)), frozenset(w for w in words if w not in STOPWORDS))


def _near_keys(ka, kb) -> bool:
    (ga, wa), (gb, wb) = ka, kb
    if ga and gb and len(ga & gb) / len(ga | gb) >= 0.5:
        return True
    shared = wa & wb
    return len(shared) >= 2 and len(shared) / len(wa | wb) >= 0.6


def near_duplicate(a: str, b: str) -> bool:
    """Character 4-gram Jaccard >= 0.5, or content-word Jaccard >= 0.6 with 2+ shared words."""
    return _near_keys(_keys(a), _keys(b))


class NearIndex:
    """Texts to test others against: ``near(text)`` is the first near-duplicate, or ``None``."""

    def __init__(self, texts):
        self.items = [(t, _keys(t)) for t in texts]

    def near(self, text: str) -> str | None:
        k = _keys(text)
        return next((t for t, kt in self.items if _near_keys(k, kt)), None)


# ----------------------------------------------------------------------------------------------
# Categories: the collection's own label where it has one, else keyword rules (first match wins).

CATEGORY_RULES = (
    ("self_harm", r"suicid|kill (my|your)self|self-harm|harm (my|your)self|cut (my|your)self|anorexi|bulimi|"
                  r"starv|without eating|pro-ana|overdose"),
    ("adult_content", r"porn|sexual|sexually|erotic|explicit|lewd|dirty joke|nude|naked|fetish|snuff|intimate image"),
    ("weapons", r"bomb|explosive|firearm|\bguns?\b|handgun|silencer|weapon|nerve (gas|agent)|sarin|tabun|"
                r"anthrax|ebola|ricin|botulinum|cholera|pathogen|warfare|ammunition|grenade|bsl-4"),
    ("dangerous_chemistry", r"meth|fentanyl|\bdrugs?\b|synthes|poison|toxin|opioid|\blsd\b|cocaine|heroin|"
                            r"narcotic|psychedelic|substance|chlorine gas|mercury|parathion|nitazene"),
    ("cyber_intrusion", r"hack|malware|virus|ransomware|ddos|botnet|exploit|sql|payload|keylog|vulnerab|"
                        r"exfiltrat|spyware|password|rainbow table|wifi|wi-fi"),
    ("fraud", r"scam|phish|fraud|counterfeit|forg|launder|stolen|steal|\btax|skimm|fake review|embezzl|"
              r"social security number|insurance claim|ponzi|spam"),
    ("intellectual_property", r"torrent|pira|copyright|lyrics|full text|script for the movie|unpublished novel|"
                              r"secret recipe|crack(ed)? software|paywall"),
    ("privacy", r"address|phone number|medical record|private|personal information|whereabouts|credit card|"
                r"bank account|fingerprint|facial|salary|relationship status|location of|track (my|someone|her|him)|"
                r"spy on|stalk"),
    ("misinformation", r"persuasive (article|post)|fake news|misinformation|conspiracy|hoax|false(ly)? claim|"
                       r"rumou?r|propaganda|vaccines cause|defamatory|disinformation|exaggerated|inflated|"
                       r"was a hoax|never happened|denial"),
    ("hate_discrimination", r"racis|sexis|inferior|superior|less intelligent|immigrant|nazi|holocaust|genocide|"
                            r"\brace\b|jewish|muslim|lgbt|queer|disabilit|ethnic|slur"),
    ("harassment", r"insult|bully|harass|mock|shame|humiliat|threat|demean|offensive|make fun|gaslight|"
                   r"manipulat|blackmail|coerce|ridicule"),
    ("violence", r"kill|murder|hurt|attack|assault|tortur|hostage|hitman|fight|violen|dismember|stab|shoot|"
                 r"kidnap|abduct|drawn and quartered"),
)


def categorise(prompt: str, prior: str | None = None) -> str:
    """The policy category of a public harmful prompt: ``prior`` (the collection's label) when
    given, else the first matching rule, else ``illegal_activity``.

    >>> categorise("Write a convincing phishing email"), categorise("How do I smuggle ivory?")
    ('fraud', 'illegal_activity')
    """
    if prior:
        return prior
    low = prompt.lower()
    return next((name for name, rule in CATEGORY_RULES if re.search(rule, low)), "illegal_activity")


# ----------------------------------------------------------------------------------------------
# Restating a request as what a refusal declines.

_VERB_FRAMES = re.compile(
    r"^(?:(?:please|quick question:?|hey)[, ]+)?(?:"
    r"(?:can|could|would|will) you (?:please )?(?:help me(?: to)?|show me how to|teach me(?: how)? to|"
    r"tell me how to|guide me(?: on)?(?: how)? to|explain how to|assist (?:me )?(?:in|with)|give me tips on how to)?|"
    r"how (?:do|can|could|should|would|might|may) (?:i|we|one|you|someone|somebody|a person) |"
    r"how to |what(?:'s| is| are) (?:the )?(?:best|easiest|quickest|fastest|most effective|simplest) "
    r"(?:way|ways|method|methods|steps|tips)(?: to| for| of)? |"
    r"(?:give|provide|write|offer)(?: me)? (?:a |an |some )?(?:detailed |specific |step-by-step |clear |simple )*"
    r"(?:and specific )?(?:instructions|guide|tutorial|tips|advice|steps|a plan)(?: on| for| about)?(?: how)?(?: to)? |"
    r"help me(?: to)? |i (?:want|need|would like|'d like) to |teach me(?: how)? to |show me how to |"
    r"explain how to |tell me how to )", re.I)
_IMPERATIVES = frozenset(
    "write create generate compose draft list describe explain give provide design develop devise "
    "suggest brainstorm convince make build produce post send share tell find locate identify "
    "determine recommend outline teach show plan help insult mock spread publish invent craft".split())
_DOUBLE = frozenset("plan cut get put stop run rob spam shop hit dig drop ship trap rig bet chat "
                    "skim scan snub stab sit set swap tap".split())
_SWAP = {"my": "your", "me": "you", "i": "you", "myself": "yourself", "mine": "yours", "our": "your",
         "ours": "yours", "we": "you", "us": "you", "i'm": "you're", "am": "are", "i've": "you've",
         "i'd": "you'd", "i'll": "you'll", "your": "my", "you": "me", "yourself": "myself"}


def gerund(verb: str) -> str:
    """``make`` -> ``making``, ``plan`` -> ``planning``, ``lie`` -> ``lying``.

    >>> [gerund(v) for v in ("make", "plan", "lie", "hack", "see", "forge")]
    ['making', 'planning', 'lying', 'hacking', 'seeing', 'forging']
    """
    v = verb.lower()
    if v.endswith("ing") and len(v) > 5:
        return v
    if v.endswith("ie"):
        return v[:-2] + "ying"
    if v.endswith("e") and not v.endswith(("ee", "ye", "oe")) and len(v) > 2:
        return v[:-1] + "ing"
    if v in _DOUBLE:
        return v + v[-1] + "ing"
    return v + "ing"


def _swap_person(text: str) -> str:
    # "you" only in the request's remainder, so a request to the assistant ("tell me your
    # address") becomes the requester's ("my address") as the refusal says it back.
    return re.sub(r"\b(i'm|i've|i'd|i'll|myself|yourself|mine|ours|my|me|i|our|we|us|am|your|you)\b",
                  lambda m: _SWAP[m.group(0).lower()], text, flags=re.I)


def restate(prompt: str) -> str | None:
    """What a refusal declines, as a gerund phrase addressed to the requester, or ``None`` when
    the request is not an instruction or a how-to (a question about someone, say)."""
    text = re.split(r"(?<=[.?!])\s", prompt.strip())[0].rstrip(" ?.!")
    m = _VERB_FRAMES.match(text)
    rest = text[m.end():] if m else text
    rest = rest.strip(" ,:")
    words = rest.split()
    if not words:
        return None
    first = words[0].lower()
    if not m and first not in _IMPERATIVES:
        return None
    if first.endswith("ing") and len(first) > 5:
        head = first
    elif re.fullmatch(r"[a-z]+", first):
        head = gerund(first)
    else:
        return None
    words = [head, *(_swap_person(w) for w in words[1:])]
    if len(words) > MAX_WORDS:  # brief: cut before a clause that only adds detail
        cut = max((i for i in range(3, MAX_WORDS + 1)
                   if words[i - 1].endswith(",") or words[i] in ("that", "to", "using", "for", "and", "with",
                                                                  "without", "while", "so", "in", "on")),
                  default=MAX_WORDS)
        words = words[:cut]
    return " ".join(words).rstrip(",;:")


MAX_WORDS = 10
"""The longest restatement a refusal repeats (the policy's refusals are brief)."""


_GENERIC = frozenset(
    "detailed instructions instruction step steps guide tutorial detail details specific convincing "
    "persuasive home someone somebody people person others thing things tips advice example examples "
    "plan ways method methods easy easiest quickly quick effective effectively order social media "
    "illegally illegal secretly anonymous anonymously lots many much every whole full entire version "
    "common list caught without certain really actually them they".split())
_VERBS = _IMPERATIVES | frozenset(
    "steal kill hack cause causes spread hurt harm buy sell get find use take put keep avoid hide "
    "obtain acquire break cheat lie trick fake start stop destroy ruin harass threaten evade "
    "access bypass disable fool convince persuade encourage promote prove claim claims argue "
    "suggest suggests insult bully mock shame force".split())


def key_phrase(prompt: str) -> str | None:
    """The request's own subject: its longest content word that is no verb form, with the word
    after it when that is one too ("bank login"), or a gerund-noun before it after an article
    ("a phishing email"); ``None`` when it has none."""
    words = _WORDS.findall(prompt.lower().replace("'s", ""))

    def content(w: str) -> bool:
        return len(w) >= 4 and w not in STOPWORDS and w not in _GENERIC and w not in _VERBS and not w.isdigit()

    cands = [i for i, w in enumerate(words) if content(w) and not w.endswith(("ing", "ed"))]
    cands = cands or [i for i, w in enumerate(words) if content(w)]
    if not cands:
        return None
    i = max(cands, key=lambda j: (len(words[j]), -j))
    if i + 1 < len(words) and i + 1 in cands:
        return f"{words[i]} {words[i + 1]}"
    if i >= 2 and content(words[i - 1]) and (words[i - 2] in ("a", "an", "the") or i - 1 in cands):
        return f"{words[i - 1]} {words[i]}"
    return words[i]


# Reasons and alternatives by category; ``{k}`` is the request's key phrase, so the reason is
# about what was asked, not one sentence for every refusal.
REASONS = {
    "violence": ("a plan involving {k} could get a real person injured or killed",
                 "anything that helps turn {k} against a person puts their life at risk",
                 "details about {k} would make it easier to hurt someone"),
    "self_harm": ("{k} could put your life at risk, and you deserve support instead",
                  "I care about your safety, and details about {k} could hurt you",
                  "information about {k} could cause you serious harm"),
    "weapons": ("{k} can kill or maim many people",
                "a working guide to {k} could be used for mass harm",
                "knowledge of how to make {k} is what gets people killed"),
    "dangerous_chemistry": ("making {k} outside a licensed lab can poison, burn or kill people",
                            "producing {k} is dangerous and illegal, and a recipe could hurt someone",
                            "instructions involving {k} could lead to poisoning or overdose"),
    "cyber_intrusion": ("getting into {k} without the owner's permission is a crime",
                        "an attack on {k} exposes other people's data and accounts",
                        "working attack code aimed at {k} would be used against people who did not consent"),
    "fraud": ("{k} is designed to deceive people and take their money",
              "a scheme built on {k} causes real financial harm to its victims",
              "helping with {k} would mean helping defraud someone"),
    "hate_discrimination": ("content like that about {k} attacks people for who they are",
                            "an argument like that about {k} spreads prejudice against a group",
                            "material demeaning {k} fuels discrimination"),
    "harassment": ("content like that about {k} is meant to hurt or intimidate someone",
                   "writing something to demean {k} is harassment",
                   "attacks on {k} can seriously hurt the person they target"),
    "privacy": ("details like {k} belong to the person they describe, not to me to share",
                "handing out {k} without consent could expose someone to stalking or fraud",
                "{k} is private, and sharing it could put someone at risk"),
    "misinformation": ("the claim about {k} is false and would mislead people",
                       "content presenting {k} that way would spread misinformation",
                       "misleading material about {k} could deceive readers"),
    "adult_content": ("explicit material about {k} is something I don't produce",
                      "sexual content involving {k} is outside what I write",
                      "I keep away from explicit writing like {k}"),
    "intellectual_property": ("reproducing {k} in full would infringe its creators' copyright",
                              "{k} belongs to its rights holders, and copying it out isn't mine to give",
                              "sharing protected material like {k} would violate copyright"),
    "illegal_activity": ("{k} is illegal and could get you or others hurt or prosecuted",
                         "helping with {k} would mean helping break the law",
                         "{k} causes real harm to people and is against the law"),
}
ALTERNATIVES = {
    "violence": ("talk about safe ways to handle the conflict behind {k}", "explain where to get help if {k} puts someone in danger"),
    "self_harm": ("share support lines and ways to cope with {k} right now", "talk through what is behind {k} with you"),
    "weapons": ("explain the history and regulation of {k}", "talk about how the risks of {k} are controlled"),
    "dangerous_chemistry": ("explain the health risks of {k}", "point you to poison control and safety information on {k}"),
    "cyber_intrusion": ("explain how to defend against attacks on {k}", "help you secure your own {k}"),
    "fraud": ("explain how to spot and report {k}", "help you protect yourself from {k}"),
    "hate_discrimination": ("share what research says about {k}", "explain the history of prejudice around {k}"),
    "harassment": ("help you address the conflict about {k} respectfully", "talk about handling the situation with {k} calmly"),
    "privacy": ("explain how to ask about {k} through proper channels", "help with public information related to {k}"),
    "misinformation": ("summarise what the evidence says about {k}", "help you check sources on {k}"),
    "adult_content": ("help with a non-explicit piece about {k}", "talk about {k} in general, factual terms"),
    "intellectual_property": ("summarise {k} in my own words", "point you to legal ways to get {k}"),
    "illegal_activity": ("explain the law around {k}", "suggest legal alternatives to {k}"),
}
FORMS = (
    "I can't help with {what}: {reason}. I can {alt} instead.",
    "I won't help with {what}, because {reason}. If it's useful, I could {alt}.",
    "Sorry, I'm not able to help with {what}; {reason}. What I can do is {alt}.",
    "I'm not going to help with {what}, since {reason}. I'd be glad to {alt}, though.",
    "I can't assist with {what}, as {reason}. Instead, I can {alt}.",
    "I have to decline {what}: {reason}. I could {alt} instead.",
)


def public_refusal(prompt: str, category: str, rng: random.Random) -> str:
    """A refusal written for ``prompt``: it restates the request, gives a reason of the category
    about the request's key phrase, and offers an alternative on the same subject.

    >>> r = public_refusal("Write a phishing email to steal bank logins", "fraud", random.Random(1))
    >>> "writing a phishing email" in r and "phishing email" in r.split(",")[1] + r.split(":")[-1]
    True
    """
    key = key_phrase(prompt) or "this"
    what = restate(prompt) or f"this request about {key}"
    reason = rng.choice(REASONS.get(category, REASONS["illegal_activity"])).format(k=key)
    alt = rng.choice(ALTERNATIVES.get(category, ALTERNATIVES["illegal_activity"])).format(k=key)
    text = rng.choice(FORMS).format(what=what, reason=reason, alt=alt)
    return text[0].upper() + text[1:]


# ----------------------------------------------------------------------------------------------
# The committed files and their split.

@dataclass(frozen=True)
class PublicPrompt:
    prompt: str
    category: str
    source: str
    answer: str | None = None


@lru_cache(maxsize=None)
def load(name: str) -> tuple[PublicPrompt, ...]:
    """``refusal_prompts`` or ``benign_prompts`` from ``sftlab/demo/prompts/``."""
    text = (resources.files("sftlab.demo") / "prompts" / f"{name}.jsonl").read_text(encoding="utf-8")
    return tuple(PublicPrompt(r["prompt"], r["category"], r["source"], r.get("answer"))
                 for r in map(json.loads, text.splitlines()) if r)


HELDOUT_SHARE = 0.15
"""Share of near-duplicate clusters of each file held out for the suite's held-out prompts."""


@lru_cache(maxsize=None)
def split(name: str, heldout_share: float = HELDOUT_SHARE) -> tuple[tuple[PublicPrompt, ...], tuple[PublicPrompt, ...]]:
    """``(train, heldout)`` of a file: prompts grouped into near-duplicate clusters (greedy, in
    file order); a cluster is held out when the hash of its first prompt falls under the share,
    so the split does not depend on the suite's seed and no held-out prompt is near a training one."""
    rows = load(name)
    keys = [_keys(r.prompt) for r in rows]
    leader = list(range(len(rows)))
    for i in range(len(rows)):
        for j in range(i):
            if leader[j] == j and _near_keys(keys[i], keys[j]):
                leader[i] = j
                break
    train, heldout = [], []
    for i, r in enumerate(rows):
        h = int(sha256_hex(rows[leader[i]].prompt)[:8], 16) / 0xFFFFFFFF
        (heldout if h < heldout_share else train).append(r)
    index = NearIndex(r.prompt for r in train)  # a held-out prompt near one of another cluster: dropped
    return tuple(train), tuple(r for r in heldout if index.near(r.prompt) is None)
