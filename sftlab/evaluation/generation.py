"""Batched generation with recorded decoder settings.

Prompts are token ids (``sftlab.tokens.encoding.encode_prompt``: content never becomes a control token).
They are sorted by length, left-padded into batches with an explicit ``attention_mask`` (padding
is masked by position, never by token id: pad may equal eos) and decoded with transformers'
``generate`` and its KV cache. The tokens every prompt of a call begins with (the template's
opening and system prompt) are read once and their cache is shared by every batch; the padding
then lies between that prefix and the rest of each prompt, still masked, with positions that count
real tokens only. Greedy by default; ``temperature > 0`` samples, seeded.

Generation stops at the tokenizer's eos and at the template's end-of-turn marker(s) (DESIGN
invariant 11); a marker that is not one token in this vocabulary (an alternate template's
``</s>`` on a ChatML tokenizer) becomes a stop string. A response is cut before its first eos
id and before the first stop string.

Example::

    >>> settings = DecoderSettings(max_new_tokens=8)
    >>> settings.to_dict()["do_sample"]
    False
"""
from __future__ import annotations

import copy
import inspect
import os.path
from dataclasses import asdict, dataclass, field

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class DecoderSettings:
    """Everything that decides what ``generate`` returns; recorded with every result."""
    max_new_tokens: int = 128
    """Most new tokens per response."""
    temperature: float = 0.0
    """0 = greedy decoding; > 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass (sampling only)."""
    top_k: int = 0
    """Keep the k most likely tokens (sampling only); 0 = off."""
    seed: int = 0
    """torch seed set before generating (matters when sampling)."""
    num_samples: int = 1
    """Responses per prompt (> 1 needs temperature > 0); each is scored as one row, and a rate's interval
    is computed at its effective sample size with prompts as clusters (responses to one prompt are not independent)."""
    batch_size: int = 8
    """Prompts per generate call; greedy responses do not depend on it."""
    stop: tuple[str, ...] = field(default=())
    """Extra stop strings; the response is cut before the first one."""

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            problems.append(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] "
                            f"(smaller ones overflow the logits), got {self.temperature:g}")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be in [0, {MAX_SEED}] (what torch.manual_seed takes), got "
                            f"{self.seed if len(str(self.seed)) < 30 else 'a number of %d digits' % len(str(self.seed))}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        if self.num_samples > 1 and self.temperature == 0:
            problems.append("num_samples > 1 needs temperature > 0 (greedy decoding gives the same "
                            "response every time)")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "stop": list(self.stop), "do_sample": self.do_sample}


def stop_tokens(tokenizer, template=None, model=None) -> tuple[list[int], list[str]]:
    """``(eos_ids, stop_strings)``: the tokenizer's and model's eos ids plus the template's
    end-of-turn markers that are single tokens; the other markers as stop strings."""
    ids: list[int] = []
    strings: list[str] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    cfg = getattr(model, "generation_config", None)
    model_eos = getattr(cfg, "eos_token_id", None)
    if model_eos is not None and len(tokenizer) > 0:
        for i in model_eos if isinstance(model_eos, (list, tuple)) else [model_eos]:
            if 0 <= int(i) < len(tokenizer):
                ids.append(int(i))
    for marker in getattr(template, "end_of_turn", ()) or ():
        if not marker:
            continue
        enc = tokenizer(marker, add_special_tokens=False).input_ids
        if len(enc) == 1 and marker in set(map(str, tokenizer.all_special_tokens)) | set(
                tokenizer.get_added_vocab()):
            ids.append(int(enc[0]))
        else:
            strings.append(marker)
    return list(dict.fromkeys(ids)), list(dict.fromkeys(strings))


def _generation_config(settings: DecoderSettings, eos_ids: list[int], pad_id: int, stop: list[str]):
    # lazy: transformers takes seconds to import
    from transformers import GenerationConfig

    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                  eos_token_id=eos_ids or None, pad_token_id=pad_id,
                  num_return_sequences=settings.num_samples, use_cache=True)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop:
        kwargs["stop_strings"] = stop
    return GenerationConfig(**kwargs)


def _cut(tokens: list[int], eos_ids: set[int], tokenizer, stop: list[str]) -> str:
    for j, t in enumerate(tokens):
        if t in eos_ids:
            tokens = tokens[:j]
            break
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def generate(model, tokenizer, prompt_ids: list[list[int]], settings: DecoderSettings, *,
             eos_ids: list[int], stop_strings: list[str] = (), progress: bool = False,
             desc: str = "generate") -> list[list[str]]:
    """``settings.num_samples`` responses for every prompt, in prompt order.

    Identical prompts (two conditions that render the same ids) are generated once. With
    ``progress`` a bar on stderr counts prompts (prompts/s and ETA), labelled ``desc`` (the
    model and condition); it redraws every few seconds when stderr is not a terminal.
    """
    # lazy: torch takes seconds to import; this module is also used where no model runs
    import torch

    from sftlab.progress import progress_bar  # lazy: tqdm costs `sftlab --help` (eval imports this module)

    stop = list(dict.fromkeys([*settings.stop, *stop_strings]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
    unique = list(dict.fromkeys(tuple(p) for p in prompt_ids))
    if any(len(p) == 0 for p in unique):
        raise ValueError("an empty prompt cannot be generated from")
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    config = _generation_config(settings, eos_ids, pad_id, stop)
    device = next(model.parameters()).device
    results: dict[tuple, list[str]] = {}
    batches = [order[b:b + settings.batch_size] for b in range(0, len(order), settings.batch_size)]
    was_training = model.training
    model.eval()
    torch.manual_seed(settings.seed)
    bar = progress_bar(total=len(unique), desc=desc, unit="prompt", enabled=progress)
    try:
        with torch.no_grad():
            prefix, cache = _prefix_cache(model, unique, settings.num_samples, device)
        for batch in batches:
            seqs = [unique[i] for i in batch]
            width = max(map(len, seqs)) - prefix
            ids = torch.tensor([[*s[:prefix], *[pad_id] * (width + prefix - len(s)), *s[prefix:]] for s in seqs],
                               device=device)
            mask = torch.tensor([[1] * prefix + [0] * (width + prefix - len(s)) + [1] * (len(s) - prefix)
                                 for s in seqs], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     tokenizer=tokenizer if stop else None,
                                     **_with_cache(model, cache, len(seqs)))
            new = out[:, prefix + width:].tolist()
            for j, s in enumerate(seqs):
                rows = new[j * settings.num_samples:(j + 1) * settings.num_samples]
                results[s] = [_cut(r, set(eos_ids), tokenizer, stop) for r in rows]
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return [results[tuple(p)] for p in prompt_ids]


MIN_PREFIX = 4
"""Shared prompt prefixes shorter than this are not worth a pass of their own."""


def _prefix_cache(model, prompts: list[tuple], num_samples: int, device):
    """``(n, cache)``: the first ``n`` tokens every prompt begins with (a chat template's opening
    and system prompt: half of a short prompt) and their KV cache, computed once; each batch then
    continues from a copy (``[prefix, padding, rest]``, the padding masked: positions count real
    tokens only, so each prompt's are what they were). ``(0, None)`` when that prefix is shorter
    than ``MIN_PREFIX`` tokens, when each prompt returns several samples, or when the model's cache
    cannot be repeated per prompt."""
    import torch  # lazy: as in generate

    n = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    if n < MIN_PREFIX or num_samples != 1:
        return 0, None
    out = model(input_ids=torch.tensor([list(prompts[0][:n])], device=device), use_cache=True,
                **last_logits_only(model))
    cache = output_cache(out)
    return (n, cache) if cache is not None and hasattr(cache, "batch_repeat_interleave") else (0, None)


def output_cache(out):
    """The KV cache of a forward pass's output (``cache`` from transformers 5, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _forward_takes(model) -> set[str]:
    """The keyword arguments the model's own ``forward`` names (a peft wrapper's takes ``**kwargs``:
    its base model's)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(inner.forward).parameters)


def with_cache(model, cache) -> dict:
    """``{name: cache}`` for a forward or ``generate`` call, under the name this transformers takes."""
    return {"cache" if "cache" in _forward_takes(model) else "past_key_values": cache}


def last_logits_only(model) -> dict:
    """``{"logits_to_keep": 1}`` where the model can skip the other positions' logits, else ``{}``."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_takes(model) else {}


def _with_cache(model, cache, rows: int) -> dict:
    """A copy of the prefix ``cache`` repeated for ``rows`` prompts, as ``generate``'s keyword."""
    if cache is None:
        return {}
    mine = copy.deepcopy(cache)
    mine.batch_repeat_interleave(rows)
    return with_cache(model, mine)
