"""Training data: the prepared stores of a config's splits, and the rows of each epoch.

``prepare_data`` turns a training config into :class:`TrainData`: every input loaded and
validated (quarantine), encoded as the config says, held out where it says (``data.eval`` files,
and the records of ``data.train`` that ``data.eval_split`` holds out by the hash of their
messages), and kept as a prepared store per split (lengths and slices in memory, tokens
memory-mapped; ``sftlab.prepare``). The main process writes ``RUN/data/`` (quarantine,
statistics, mask preview). ``TrainData`` then gives each
epoch's rows as a pure function of (examples, config, seed, epoch), so a resumed run rebuilds them.
The training loop (``sftlab.train.loop``) only asks it for micro-batches.
"""
from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sftlab.data.chunk_stats import with_leakage
from sftlab.data.policy import load_policy
from sftlab.data.stats import with_files
from sftlab.errors import UsageError
from sftlab.evaluation.prompts import load_prompt_sets
from sftlab.files import atomic_file, write_atomic
from sftlab.prepare import Spool, prepare
from sftlab.tokens.mask_preview import write_mask_preview
from sftlab.tokens.packing import PackedRow, check_lengths, collate, pack_lengths_flat
from sftlab.tokens.rows import EpochRows, ExampleTable
from sftlab.train.config import DataConfig, TrainConfig
from sftlab.train.mixture import (PLAN_VERSION, MixtureSpec, SliceColumn, check_loss_weights, plan_generator,
                                  realised_mixture, slice_of)


def prepare_stores(cfg: TrainConfig, tokenizer, template, accelerator=None, policy=None) -> dict:
    """The prepared stores of the config's splits: ``train``, and ``heldout`` with ``data.eval``
    or ``data.eval_split``. With ``data.eval_split`` the training inputs are read for each side
    (``sftlab.prepare.prepare(sides=...)``): the ``train`` store keeps the records whose
    message hash is at or above the share, the ``heldout`` store the ``data.eval`` records and
    then those below it, as ``sftlab.data.split.split_by_hash`` assigns them. An input that is a
    pipe or FIFO is copied once (``Spool``) and read from the copy by both."""
    policy = policy if policy is not None else _policy(cfg)
    train, held, share = list(cfg.data.train), list(cfg.data.eval or []), cfg.data.eval_split
    with Spool(cfg.data.cache_dir) as spool:
        stores = {"train": _open_split(cfg, train, "train", tokenizer, template, policy, accelerator, spool,
                                       ["train"] * len(train) if share else None)}
        if held or share:
            stores["heldout"] = _open_split(cfg, held + (train if share else []), "heldout", tokenizer, template,
                                            policy, accelerator, spool,
                                            [None] * len(held) + ["heldout"] * len(train) if share else None)
    return stores


REASON_KEYS = {"too_long": "encoding.max_length"}
"""Quarantine reasons a config key can change, besides ``data.max_quarantined_share``."""


def quarantine_reasons(stores: dict) -> dict[str, int]:
    """How many records each rule quarantined, over the stores' quarantine files, most frequent first."""
    counts: Counter = Counter()
    for store in stores.values():
        with open(store.quarantine_path, encoding="utf-8") as f:
            counts.update(json.loads(line).get("code") or "other" for line in f if line.strip())
    return dict(counts.most_common())


def quarantine_rule(records: int, reasons: dict[str, int], allowed: float, where: str) -> tuple[int, str] | None:
    """``(exit code, what to say)`` for the quarantined records, ``None`` when none was: 1 when
    their share exceeds ``data.max_quarantined_share`` (``allowed``), else 0. ``prepare`` and
    ``train`` both decide by it. What it says: the count per reason, where each record and its
    reason is (``where``), and the keys that change the outcome::

        >>> quarantine_rule(1000, {"too_long": 22}, 0.0, "RUN/data/quarantine.jsonl")[1]
        '22 of 1000 records quarantined (2.20%: too_long 22), more than data.max_quarantined_share=0; each record and its reason: RUN/data/quarantine.jsonl; to train on the rest set data.max_quarantined_share=0.022 or more; too_long: raise encoding.max_length'
    """
    quarantined = sum(reasons.values())
    if not quarantined:
        return None
    share = quarantined / records if records else 1.0
    counts = ", ".join(f"{code} {n}" for code, n in reasons.items())
    head = f"{quarantined} of {records} records quarantined ({share:.2%}: {counts})"
    if share <= allowed:
        return 0, f"{head}, within data.max_quarantined_share={allowed:g}; each record and its reason: {where}"
    fixes = [f"{code}: raise {REASON_KEYS[code]}" for code in reasons if code in REASON_KEYS]
    return 1, "; ".join([f"{head}, more than data.max_quarantined_share={allowed:g}",
                         f"each record and its reason: {where}",
                         f"to train on the rest set data.max_quarantined_share={math.ceil(share * 1000) / 1000:g} or more",
                         *fixes])


def _policy(cfg: TrainConfig):
    if not cfg.data.policy:
        return None
    return load_policy(cfg.data.policy)


class TrainData:
    """Encoded training and held-out examples, and the rows of each epoch.

    ``examples`` is a prepared store (``sftlab.prepare.PreparedStore``: per-example lengths
    and slices in memory, tokens memory-mapped) or a list of ``EncodedExample``; rows refer to
    examples by index and read their tokens only when collated. Rows of epoch e are a pure
    function of (examples, config, seed, e): mixture sample (from the slice of each example),
    pack (from the lengths) or one example per row, shuffle; slice loss weights scale the
    weights as rows are collated. Step s of an epoch takes rows ``[s*G, (s+1)*G)`` with
    ``G = micro_batch_size x grad_accum x world_size``; process r takes every ``world_size``-th
    of them starting at r, in micro-batches of ``micro_batch_size``.
    """

    def __init__(self, cfg: TrainConfig, examples, eval_sets: dict, pad_id: int, eval_table=None,
                 plan: int | None = None):
        m = cfg.mixture
        self.mixture = MixtureSpec(sampling_weights=m.sampling_weights, temperature=m.temperature,
                                   loss_weights=dict(m.loss_weights), seed=cfg.seed,
                                   plan=PLAN_VERSION if plan is None else plan)
        self.table = examples if hasattr(examples, "lengths") else ExampleTable(examples)
        self.slices = SliceColumn(self.table.slice_names, self.table.slice_codes)
        try:
            check_loss_weights(self.mixture.loss_weights, self.table.slice_names if len(self.table) else None)
            if len(self.table):
                self.mixture.shares(self.slices)  # sampling weights: the same questions
        except ValueError as e:
            raise UsageError(str(e)) from None
        scales = [float(self.mixture.loss_weights.get(slice_of(s), 1.0)) for s in self.table.slice_names]
        self.scales = np.asarray(scales) if any(x != 1.0 for x in scales) else None
        if eval_table is None and eval_sets:  # lists of examples per slice, made in code
            flat = [ex for exs in eval_sets.values() for ex in exs]
            eval_table, n = ExampleTable(flat), 0
            sets = {}
            for name, exs in eval_sets.items():
                sets[name] = np.arange(n, n + len(exs))
                n += len(exs)
            eval_sets = sets
        self.cfg, self.eval_sets, self.eval_table, self.pad_id = cfg, eval_sets, eval_table, pad_id
        self.splits: dict = {}
        self.quarantined = 0
        self.policy = None
        self.failed_checks: list[dict] = []
        self.gen_prompts: list = []
        self.store_info: dict = {}
        self.records = 0
        self.quarantine_reasons: dict[str, int] = {}
        self._epoch: tuple[int, object, dict] | None = None

    def _build(self, epoch: int) -> tuple[object, dict]:
        """Mixture sample of the epoch -> rows (packed or one per row) -> shuffled."""
        if self._epoch is None or self._epoch[0] != epoch:
            idx = self.mixture.epoch_index_array(self.slices, epoch)
            lengths = self.table.lengths[idx]
            if self.cfg.packing.mode == "packed":
                members, starts = pack_lengths_flat(lengths, self.cfg.row_length)
                members = idx[members]
            else:
                check_lengths(lengths, self.cfg.row_length)
                members, starts = idx, np.arange(len(idx) + 1, dtype=np.int64)
            rows = EpochRows(self.table, members, starts, self._row_order(len(starts) - 1, epoch), self.scales)
            self._epoch = (epoch, rows, realised_mixture(idx, self.slices))
        return self._epoch[1], self._epoch[2]

    def _row_order(self, n: int, epoch: int):
        """The shuffled order of an epoch's n rows, drawn as the run's plan draws (``mixture.plan``)."""
        if self.mixture.plan == 1:
            order = list(range(n))
            random.Random(f"sftlab-rows:{self.cfg.seed}:{epoch}").shuffle(order)
            return order
        return plan_generator("rows", self.cfg.seed, epoch).permutation(n)

    def epoch_rows(self, epoch: int):
        return self._build(epoch)[0]

    def realised_mixture(self, epoch: int) -> dict:
        return self._build(epoch)[1]

    def steps_in_epoch(self, epoch: int, world: int) -> int:
        per_step = self.cfg.optim.micro_batch_size * self.cfg.optim.grad_accum * world
        return -(-len(self.epoch_rows(epoch)) // per_step)  # the last step may be partial

    def total_steps(self, world: int) -> int:
        if self.cfg.optim.max_steps:
            return self.cfg.optim.max_steps
        return sum(self.steps_in_epoch(e, world) for e in range(self.cfg.optim.epochs))

    def micro_batches(self, rows, s: int, rank: int, world: int) -> list[dict]:
        o = self.cfg.optim
        per_step = o.micro_batch_size * o.grad_accum * world
        mine = rows[s * per_step:(s + 1) * per_step][rank::world]
        if not mine:  # a partial last step left this rank without a row: it still has to join the
            # gradient all-reduce, so it runs one padding token of weight 0 (zero gradient)
            mine = [PackedRow.from_tokens((self.pad_id,), (0.0,), example_indices=(-1,))]
        return [collate(mine[i:i + o.micro_batch_size], self.pad_id)
                for i in range(0, len(mine), o.micro_batch_size)]

    def eval_rows(self, name: str, rank: int, world: int) -> list:
        """One row per held-out example of slice ``name``, every ``world``-th from ``rank``."""
        return self.eval_table.rows([[int(i)] for i in self.eval_sets[name][rank::world]])


def prepare_data(cfg: TrainConfig, tokenizer, template, run: Path, *, write: bool, check=None,
                 accelerator=None, plan: int | None = None) -> TrainData:
    """Prepared stores of the training and held-out data (opened from the cache, or built:
    ``sftlab.prepare``) -> TrainData. In a multi-process run the main process of each
    node prepares or opens the stores; the others wait, then memory-map them. The main process
    (``write``) also writes RUN/data/quarantine.jsonl, RUN/data/stats.json (duplicates,
    held-out leakage, ...) and the mask preview, all read from the stores. ``check(data)``, when
    given, runs before anything is written (and may raise). ``plan``: how epochs are drawn
    (``sftlab.train.mixture.PLAN_VERSION`` when ``None``; a resumed run passes its own)."""
    policy = _policy(cfg)
    stores = prepare_stores(cfg, tokenizer, template, accelerator, policy)
    train = stores["train"]
    if not len(train):
        raise UsageError(f"no trainable example in {', '.join(DataConfig.paths(cfg.data.train))} "
                         f"({train.quarantined} quarantined; see {run / 'data' / 'quarantine.jsonl'})")
    splits = {"train": _split_record(train)}
    eval_sets: dict[str, np.ndarray] = {}
    held = stores.get("heldout")
    if held is not None:
        splits["heldout"] = _split_record(held)
        names = [slice_of(s) for s in held.slice_names]
        for code, name in enumerate(names):
            idx = np.flatnonzero(held.slice_codes == code)
            eval_sets[name] = np.concatenate([eval_sets[name], idx]) if name in eval_sets else idx
    if held is not None and not len(held):
        none = _no_heldout(cfg, held, train)
        if cfg.eval.early_stopping.patience:
            raise UsageError(f"eval.early_stopping.patience={cfg.eval.early_stopping.patience} needs a validation "
                             f"loss: {none}")
        if write:
            print(f"sftlab train: the run has no validation loss: {none}", file=sys.stderr)
    metric = cfg.eval.early_stopping.metric
    if cfg.eval.early_stopping.patience and metric.removeprefix("eval_loss/") not in {"all", *eval_sets}:
        raise UsageError(f"eval.early_stopping.metric={metric}: no such curve; expected eval_loss/all or "
                         f"one of {', '.join('eval_loss/' + s for s in sorted(eval_sets))}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    data = TrainData(cfg, train, eval_sets, pad_id, eval_table=held, plan=plan)
    data.splits, data.quarantined, data.policy = splits, sum(s.quarantined for s in stores.values()), policy
    data.store_info = {split: s.describe() for split, s in stores.items()}
    data.records = sum(s.meta["records"] for s in stores.values())
    data.quarantine_reasons = quarantine_reasons(stores)
    data.gen_prompts = _generation_prompts(cfg)
    if check is not None:
        check(data)
    if write:
        write_mask_preview(run, train.preview(), tokenizer, template, n=4,
                           max_length=cfg.encoding.max_length, last_turn_only=cfg.encoding.last_turn_only,
                           reasoning=cfg.encoding.reasoning, inline_reasoning=cfg.encoding.inline_reasoning,
                           mask_source=cfg.encoding.mask_source)
        (run / "data").mkdir(parents=True, exist_ok=True)
        with atomic_file(run / "data" / "quarantine.jsonl") as f:
            for split, store in stores.items():
                with open(store.quarantine_path, encoding="utf-8") as q:
                    for line in q:  # streamed: the split is added in front of each entry
                        f.write(f'{{"split": {json.dumps(split)}, {line[1:]}' if line.startswith("{") else line)
        data.failed_checks = _write_store_stats(run, train, held)
    return data


def _no_heldout(cfg: TrainConfig, held, train) -> str:
    """What to say when the held-out split asked for holds no example: a share too small for the
    data (0.02 of 30 records holds out none), or held-out files all quarantined."""
    asked = [f"data.eval_split={cfg.data.eval_split} of {train.meta['records']} training records"] if cfg.data.eval_split \
        else []
    asked += ["data.eval"] if cfg.data.eval else []
    lost = f", {held.quarantined} quarantined" if held.quarantined else ""
    return (f"no held-out example ({' and '.join(asked)} gave {held.meta['records']} records{lost}); raise "
            "data.eval_split or give data.eval")


def _encoding_options(cfg: TrainConfig) -> dict:
    """``encode_all``'s options as the config sets them: every one is part of the store's key."""
    options = cfg.encoding.model_dump()
    options["max_length"] = min(cfg.encoding.max_length, cfg.row_length)
    if not (options["opening_tokens"] and options["opening_weight"] != 1.0):  # off: the key as without it
        del options["opening_tokens"], options["opening_weight"]
    return options


def _open_split(cfg: TrainConfig, entries: list, split: str, tokenizer, template, policy, accelerator, spool,
                sides: list | None):
    """The prepared store of one split: the main process of each node builds or opens (and
    checks) it, the others wait and then open it without checking again."""
    paths = DataConfig.paths(entries)
    kwargs = dict(options=_encoding_options(cfg), policy=policy, cache_dir=cfg.data.cache_dir,
                  num_proc=cfg.data.num_proc, progress=cfg.log.progress, label=f"prepare {split}",
                  columns=cfg.data.columns(entries), sides=sides, eval_split=cfg.data.eval_split, spool=spool)
    if accelerator is None or accelerator.num_processes == 1:
        return prepare(paths, tokenizer, template, **kwargs)
    store = None
    if accelerator.is_local_main_process:
        store = prepare(paths, tokenizer, template, **kwargs)
    accelerator.wait_for_everyone()
    if store is None:
        store = prepare(paths, tokenizer, template, **{**kwargs, "progress": False}, build=False, verify=False)
    return store


def _split_record(store) -> dict:
    """The manifest's record of one split: data version, counts per file, the store used."""
    files = store.files
    record = {"records_sha256": store.meta["records_sha256"], "records": sum(f["records"] for f in files),
              "accepted": len(store), "quarantined": store.quarantined, "files": files,
              "store_key": store.key, **({"warnings": store.meta["warnings"]} if store.meta.get("warnings") else {})}
    split = store.meta.get("split")
    if split and "heldout" in split["sides"]:
        record["from_train"] = {"eval_split": split["eval_split"],
                                "records": sum(n for n, s in zip(split["records"], split["sides"]) if s == "heldout")}
    return record


def _generation_prompts(cfg: TrainConfig) -> list:
    """The prompts of ``eval.prompts`` (rows that cannot be used are reported, not fatal)."""
    if not cfg.eval.prompts:
        return []
    sets = load_prompt_sets(cfg.eval.prompts)
    for bad in (b for s in sets for b in s.bad_rows):
        print(f"eval.prompts: skipped {bad['file']}:{bad['line']}: {bad['reason']}", file=sys.stderr)
    prompts = [p for s in sets for p in s.prompts]
    if not prompts:
        raise UsageError(f"eval.prompts={cfg.eval.prompts}: no usable prompt")
    return prompts


def gen_eval_settings(cfg: TrainConfig) -> dict:
    """Decoder settings of the generation curves (greedy), as recorded in the manifest."""
    return {"max_new_tokens": cfg.eval.generation_max_new_tokens, "temperature": 0.0, "batch_size": 16,
            "seed": cfg.seed}


def store_stats(train, held=None) -> dict:
    """The statistics of a config's data, from its prepared stores: the training store's
    statistics, held-out leakage measured from the compact summaries of both, and the per-file
    counts of both splits (``sftlab.data.stats``' schema plus ``files`` and ``quarantined``).
    What ``RUN/data/stats.json``, ``sftlab stats CONFIG`` and the report show."""
    stats = train.stats
    stats.pop("files", None)
    if held is not None:
        stats = with_leakage(stats, train.summaries(), held.summaries())
    report = lambda store: SimpleNamespace(files=[SimpleNamespace(**f) for f in store.files])  # noqa: E731
    return with_files(stats, report(train), report(held) if held is not None else None)


def _write_store_stats(run: Path, train, held) -> list[dict]:
    """RUN/data/stats.json (``store_stats``), before training; returns the failed checks (besides
    quarantine)."""
    stats = store_stats(train, held)
    write_atomic(run / "data" / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    failed = [c for c in stats["checks"] if not c["passed"] and c["name"] != "quarantine"]
    for check in failed:
        print(f"sftlab train: data check {check['name']} failed: {check['message']} "
              f"(see {run / 'data' / 'stats.json'})", file=sys.stderr)
    return failed


def heldout_encoding(cfg: TrainConfig) -> dict:
    """How training encodes data (training and held-out alike) and normalises its loss: recorded
    in the manifest so that ``sftlab eval`` computes the held-out loss of the same examples."""
    return {"max_length": min(cfg.encoding.max_length, cfg.row_length),
            "last_turn_only": cfg.encoding.last_turn_only, "reasoning": cfg.encoding.reasoning,
            "inline_reasoning": cfg.encoding.inline_reasoning,
            "turns": cfg.encoding.turns, "overflow": cfg.encoding.overflow, "mask_source": cfg.encoding.mask_source,
            "normalisation": cfg.loss.normalisation,
            **{k: v for k, v in _encoding_options(cfg).items() if k.startswith("opening_")}}
