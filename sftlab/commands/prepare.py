"""``sftlab prepare CONFIG.yaml [key=value ...] [--json]``: encode the data of a training config ahead of training."""
from __future__ import annotations

import argparse
import json

from sftlab.train.config import load_config

HELP = """Read, validate and encode the training (and held-out) data of CONFIG.yaml into the
prepared-data store, as `sftlab train` would, without loading the model's weights: run it on a
CPU machine before GPUs are booked. The store is keyed by the content of the records, template,
tokenizer, encoding options, policy and sftlab version; `sftlab train` with the same inputs opens
it in seconds (a cache hit), any change builds a new one. data.num_proc processes encode in
parallel. Exit codes, by the rule `sftlab train` applies: 0 prepared, with no more records
quarantined than data.max_quarantined_share allows (default 0); 1 prepared, more quarantined (the
output gives the count per reason, the store's quarantine.jsonl with each record and its reason,
and the keys to change); 2 unusable config or data."""


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="encode a config's data into the prepared-data store",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG.yaml", help="training config (YAML), as for `sftlab train`")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override a config key (dotted path), value parsed as YAML")
    p.add_argument("--json", action="store_true", help="print one JSON object with the stores on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: the modules that do the work load when the command runs, not for `sftlab --help`
    from sftlab.model.loading import config_tokenizer
    from sftlab.train.data import prepare_stores, quarantine_reasons, quarantine_rule

    cfg = load_config(args.config, args.overrides)
    tokenizer, template, _ = config_tokenizer(cfg)
    stores = prepare_stores(cfg, tokenizer, template)
    out = {split: {**s.describe(), "quarantined": s.quarantined, "reasons": quarantine_reasons({split: s}),
                   "quarantine": str(s.quarantine_path)} for split, s in stores.items()}
    where = " and ".join(s["quarantine"] for s in out.values() if s["quarantined"])
    rule = quarantine_rule(sum(s.meta["records"] for s in stores.values()), quarantine_reasons(stores),
                           cfg.data.max_quarantined_share, where)
    code, reason = rule or (0, "no record quarantined")
    if args.json:
        print(json.dumps({**out, "exit_code": code, "exit_reason": reason}))
    else:
        for split, s in out.items():
            state = "reused" if s["hit"] else "built"
            print(f"{split}: {state} {s['path']}: {s['examples']:,} examples, {s['tokens']:,} tokens, "
                  f"{s['quarantined']:,} quarantined")
        print(f"exit {code}: {reason}")
    return code
