#!/usr/bin/env python3
"""How sftlab's data preparation and training scale: a small table for each.

What it measures:

- preparation (load + chat template + response-only masks + best-fit-decreasing packing at
  1,024 tokens, one process) wall time, conversations/s and the peak RSS of the process, for
  10k ... 200k conversations from ../shared/bench/make_data.py (``-n``, seed 0; the 20k set is
  the one compare_trl.py uses);
- training real tokens/s of ``sftlab.train.loop.train`` (fp32, CPU) for rows of 512 ... 4,096
  tokens, at the same 4,096 tokens per optimizer step (one row per micro-batch, accumulation
  4096 / row length), on the 20k set.

Every point runs in its own process (compare_trl.py's workers), so peak RSS is that point's
alone. Timings are printed, never asserted. Inputs are generated into --work when missing.

With ``--store`` it measures the prepared-data store (``sftlab.prepare``) against its goals
instead, side by side in one run (``--store-sizes``, default 100k, 200k and 1M conversations):

- cold preparation (``prepare``: read, validate, encode, statistics, write; ``--num-proc``
  worker processes) wall time, CPU time of every process, and peak RSS (the main process and the
  largest worker), against the Rust tokenizer alone on the same rendered text (``encode_batch``
  on its thread pool, all cores; rendering not counted), and against the tokenizer with its ids
  read into Python and its encodings freed, which every user of its output pays too (``+ids``);
- a warm ``sftlab.train.loop.train`` (the store reused) for 2 optimizer steps: peak RSS of the
  training process, and the seconds from ``train()`` to its first optimizer step minus the
  model and tokenizer loading;
- two processes (``accelerate launch``, CPU, gloo) against one, cold, at ``--two-size``: CPU
  seconds spent in data preparation summed over the processes;
- TRL's preparation (``datasets.load_dataset("json")`` + ``SFTTrainer._prepare_dataset``) at
  200k, cold (empty ``datasets`` cache) and warm (the same cache, a new process).

    .venv/bin/python bench/scaling.py --store --out store.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import ensure_inputs, environment, load_average, run_worker  # noqa: E402


def worker_args(data: Path, model: Path, **over) -> SimpleNamespace:
    base = dict(data=data, model=model, max_length=1024, repeat=1, num_proc=1, warmup=2, steps=5,
                grad_accum=4, lengths=[1024])
    return SimpleNamespace(**{**base, **over})


def preparation(work: Path, sizes: list[int]) -> list[dict]:
    out = []
    for n in sizes:
        data, model = ensure_inputs(work, n)
        r = run_worker("prep-sftlab", worker_args(data, model))
        seconds = r["prep_s"][0]
        out.append({"conversations": n, "load_s": r["load_s"], "prep_s": seconds, "conv_per_s": n / seconds,
                    "tokens": r["tokens"], "rows": r["rows"], "efficiency": r["efficiency"]["1024"],
                    "peak_rss_mib": r["peak_rss_mib"]})
    return out


def training(work: Path, lengths: list[int], tokens_per_step: int, warmup: int, steps: int) -> list[dict]:
    data, model = ensure_inputs(work)
    out = []
    for length in lengths:
        accum = max(1, tokens_per_step // length)
        r = run_worker("train-sftlab", worker_args(data, model, max_length=length, grad_accum=accum,
                                                   lengths=[length], warmup=warmup, steps=steps))
        out.append({"max_length": length, "grad_accum": accum, "tokens_per_s": r["tokens_per_s"],
                    "tokens": r["tokens"], "seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]})
    return out


def table(res: dict) -> str:
    lines = [f"sftlab preparation (load + template + masks + packing at 1024, 1 process), "
             f"load average {res['load_average_before']} -> {res['load_average_after']}",
             f"{'conversations':>14}{'load s':>9}{'prep s':>9}{'conv/s':>9}{'tokens':>13}{'packed':>9}"
             f"{'peak RSS MiB':>14}{'MiB/1k conv':>13}"]
    for r in res["preparation"]:
        lines.append(f"{r['conversations']:>14,}{r['load_s']:>9.1f}{r['prep_s']:>9.1f}{r['conv_per_s']:>9,.0f}"
                     f"{r['tokens']:>13,}{100 * r['efficiency']:>8.2f}%{r['peak_rss_mib']:>14,.0f}"
                     f"{1000 * r['peak_rss_mib'] / r['conversations']:>13.1f}")
    lines += ["", f"sftlab training (fp32, CPU, {res['tokens_per_step']:,} tokens per optimizer step, "
                  f"{res['warmup']} + {res['steps']} steps)",
              f"{'row length':>11}{'accumulation':>14}{'tokens/s':>10}{'peak RSS MiB':>14}"]
    for r in res["training"]:
        lines.append(f"{r['max_length']:>11,}{r['grad_accum']:>14}{r['tokens_per_s']:>10,.0f}"
                     f"{r['peak_rss_mib']:>14,.0f}")
    return "\n".join(lines)


# -- the prepared-data store: workers, each run in its own process by run_store_worker ------------

def _peaks() -> dict:
    import resource

    return {"self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _cpu() -> float:
    import resource

    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _config(a: dict, out: str, **optim):
    from sftlab.train.config import TrainConfig

    return TrainConfig.model_validate({
        "model": {"path": a["model"], "dtype": "float32"}, "out": out,
        "data": {"train": [a["data"]], "cache_dir": a["cache"], "num_proc": a.get("num_proc", 1)},
        "template": "chatml", "encoding": {"max_length": 1024}, "log": {"progress": False, "trackers": []},
        "optim": {"lr": 2e-5, "micro_batch_size": 1, **optim}})


def store_prep(a: dict) -> dict:
    """Cold ``sftlab prepare`` of the training file into the (empty) cache ``a["cache"]``."""
    from sftlab.train.data import prepare_stores
    from sftlab.model.loading import config_tokenizer

    cfg = _config(a, "unused")
    tok, template, _ = config_tokenizer(cfg)
    t0, c0 = time.perf_counter(), _cpu()
    store = prepare_stores(cfg, tok, template)["train"]
    return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "examples": len(store),
            "tokens": int(store.meta["tokens"]), "records": store.meta["records"], "hit": store.hit,
            "quarantined": store.quarantined, "store_bytes": sum(v[0] for v in store.meta["checksums"].values()),
            **_peaks()}


def store_floor(a: dict) -> dict:
    """The tokenizer alone (``encode_batch``, its thread pool on all cores) on the ChatML rendering
    of every conversation, rendered a block at a time (rendering not timed): ``seconds``/``cpu_s``
    the encoding alone; ``out_seconds``/``out_cpu_s`` that and what any user of its output pays
    as well: reading each encoding's ids into Python (about 40 ns a token) and freeing the
    encodings (a few small allocations per token)."""
    from transformers import AutoTokenizer

    from sftlab.data.formats import to_conversation
    from sftlab.tokens.templates import get_template

    tok = AutoTokenizer.from_pretrained(a["model"])
    template, backend = get_template("chatml", tok), tok.backend_tokenizer
    seconds, tokens, block = 0.0, 0, []
    cpu = out_seconds = out_cpu = 0.0

    def run(texts):
        nonlocal seconds, tokens, cpu, out_seconds, out_cpu
        t0, c0 = time.perf_counter(), _cpu()
        out = backend.encode_batch(texts, add_special_tokens=False)
        seconds += time.perf_counter() - t0
        cpu += _cpu() - c0
        ids = [e.ids for e in out]
        del out
        tokens += sum(map(len, ids))
        del ids
        out_seconds += time.perf_counter() - t0
        out_cpu += _cpu() - c0

    with open(a["data"], encoding="utf-8") as f:
        for line in f:
            conv = to_conversation(json.loads(line))
            block.append(template.render([{"role": m.role, "content": m.content} for m in conv.messages]))
            if len(block) == 8192:
                run(block)
                block = []
    if block:
        run(block)
    return {"seconds": seconds, "cpu_s": cpu, "out_seconds": out_seconds, "out_cpu_s": out_cpu, "tokens": tokens,
            **_peaks()}


def store_train(a: dict) -> dict:
    """``train`` for 2 optimizer steps on a prepared (warm) cache: peak RSS, and the seconds to the
    first optimizer step with and without the model loading."""
    import sftlab.train.loop as loop

    marks: dict = {}
    load, micro, prep = loop.load_training_model, loop.TrainData.micro_batches, loop.prepare_data

    def timed_prep(*args, **kw):
        t0, c0 = time.perf_counter(), _cpu()
        out = prep(*args, **kw)
        marks.update(prepare_data_s=time.perf_counter() - t0, prepare_data_cpu_s=_cpu() - c0)
        return out

    def timed_load(cfg):
        t0 = time.perf_counter()
        out = load(cfg)
        marks["load_s"] = time.perf_counter() - t0
        return out

    def first_step(self, *args, **kw):
        marks.setdefault("first_step_at", time.perf_counter())
        marks.setdefault("first_step_cpu", _cpu())
        return micro(self, *args, **kw)

    loop.load_training_model, loop.TrainData.micro_batches = timed_load, first_step
    loop.prepare_data = timed_prep
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(a, str(Path(out) / "run"), grad_accum=4, max_steps=2)
        t0, c0 = time.perf_counter(), _cpu()
        loop.train(cfg)
        manifest = json.loads((Path(out) / "run" / "run.json").read_text())
    to_step = marks["first_step_at"] - t0
    return {"to_first_step_s": to_step, "load_s": marks["load_s"], "data_s": to_step - marks["load_s"],
            "to_first_step_cpu_s": marks["first_step_cpu"] - c0, "prepare_data_s": marks["prepare_data_s"],
            "prepare_data_cpu_s": marks["prepare_data_cpu_s"],
            "hit": manifest["data"]["store"]["train"]["hit"], **_peaks()}


def store_two(a: dict) -> dict:
    """Inside ``accelerate launch`` (or alone): ``train`` for 1 step, cold cache; each process
    writes the CPU seconds it spent in ``prepare_data``."""
    import os

    import sftlab.train.loop as loop

    original = loop.prepare_data
    spent = {}

    def timed(*args, **kw):
        c0, t0 = time.process_time(), time.perf_counter()
        out = original(*args, **kw)
        spent.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - t0)
        return out

    loop.prepare_data = timed
    loop.train(_config(a, a["out"], grad_accum=2, max_steps=1))
    rank = int(os.environ.get("RANK", "0"))
    Path(a["out"], f"prep-{rank}.json").write_text(json.dumps(spent))
    return spent


def trl_cached(a: dict) -> dict:
    """TRL: ``load_dataset("json")`` + ``SFTTrainer._prepare_dataset`` with the ``datasets`` cache
    in ``a["hf_cache"]`` (cold when empty, warm on a second run)."""
    import os

    os.environ["HF_DATASETS_CACHE"] = a["hf_cache"]
    import datasets

    from compare_trl import _trl_trainer, trl_config

    datasets.disable_progress_bars()
    t0, c0 = time.perf_counter(), _cpu()
    ds = datasets.load_dataset("json", data_files=a["data"], split="train", cache_dir=a["hf_cache"])
    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_trainer(a["model"], trl_config(out, max_length=1024), ds.select(range(64)))
        packed = trainer._prepare_dataset(ds, trainer.processing_class, trainer.args, True, None, "train")
    return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "rows": len(packed), **_peaks()}


STORE_WORKERS = {"store-prep": store_prep, "store-floor": store_floor, "store-train": store_train,
                 "store-two": store_two, "trl-cached": trl_cached}


def run_store_worker(name: str, args: dict, launch: list[str] | None = None) -> dict:
    import os
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [*(launch or [sys.executable]), str(Path(__file__).resolve()), "--worker", name,
               "--worker-args", json.dumps(args), "--result", str(result)]
        print(f"[scaling] {name} {args.get('n', '')} ...", file=sys.stderr, flush=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode not in (0, 1) or (launch and "error" in proc.stderr.lower() and proc.returncode) \
                or (not result.exists() and not launch):
            raise SystemExit(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(result.read_text()) if result.exists() else {}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # other runs on a shared machine may hold accelerate's default port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store_goals(work: Path, sizes: list[int], two_size: int, trl_size: int, num_proc: int,
                save=lambda res: None) -> dict:
    """Every point in turn; ``save(partial results)`` after each, so an interrupted run keeps what it measured."""
    import shutil

    res: dict = {"num_proc": num_proc, "sizes": {}}
    for n in sizes:
        data, model = ensure_inputs(work, n)
        cache = work / f"store-cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        args = {"n": n, "data": str(data / "train.jsonl"), "model": str(model), "cache": str(cache),
                "num_proc": num_proc}
        point = {"load_average_before": load_average()}
        point["prep"] = run_store_worker("store-prep", args)
        point["floor"] = run_store_worker("store-floor", args)
        point["train_warm"] = run_store_worker("store-train", args)
        point["load_average_after"] = load_average()
        shutil.rmtree(cache, ignore_errors=True)
        res["sizes"][n] = point
        save(res)
    # two processes against one, each on a cold cache
    data, model = ensure_inputs(work, two_size)
    two: dict = {"conversations": two_size}
    for procs in (1, 2):
        out, cache = work / f"two-{procs}", work / f"two-cache-{procs}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        args = {"n": two_size, "data": str(data / "train.jsonl"), "model": str(model), "cache": str(cache),
                "out": str(out)}
        launch = None if procs == 1 else [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]
        run_store_worker("store-two", args, launch)
        per = [json.loads(p.read_text()) for p in sorted(out.glob("prep-*.json"))]
        two[procs] = {"processes": per, "cpu_s": sum(p["cpu_s"] for p in per),
                      "built_stores": len([d for d in cache.iterdir() if d.name != "index"])}
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    res["two_processes"] = two
    save(res)
    if not trl_size:  # --trl-size 0: no TRL point
        return res
    # TRL with its datasets cache, cold then warm
    data, model = ensure_inputs(work, trl_size)
    hf = work / "trl-hf-cache"
    shutil.rmtree(hf, ignore_errors=True)
    args = {"n": trl_size, "data": str(data / "train.jsonl"), "model": str(model), "hf_cache": str(hf)}
    res["trl"] = {"conversations": trl_size, "cold": run_store_worker("trl-cached", args),
                  "warm": run_store_worker("trl-cached", args)}
    shutil.rmtree(hf, ignore_errors=True)
    return res


def _store_needs(a) -> str:
    """What a --store run needs and makes, said before it starts."""
    import importlib.util

    from compare_trl import SHARED

    missing = [m for m in ("accelerate", *(("trl",) if a.trl_size else ())) if importlib.util.find_spec(m) is None]
    sizes = sorted({*a.store_sizes, a.two_size, *((a.trl_size,) if a.trl_size else ())})
    return (f"[scaling] --store needs: {SHARED}/make_data.py and make_model.py (inputs of "
            f"{', '.join(f'{n:,}' for n in sizes)} conversations are generated into {a.work} when missing, "
            f"about 1.7 KB a conversation), accelerate (the two-process point), trl (the TRL point; "
            f"--trl-size 0 leaves it out), {a.num_proc} worker processes for preparation"
            + (f"; not installed: {', '.join(missing)}" if missing else ""))


def store_table(res: dict) -> str:
    lines = [f"sftlab prepared-data store ({res['num_proc']} worker processes for preparation)",
             f"{'conversations':>14}{'prep s':>8}{'prep CPU s':>11}{'tokenizer s':>12}{'tok CPU s':>10}{'CPU ratio':>10}"
             f"{'+ids CPU s':>11}{'ratio':>7}"
             f"{'prep RSS MiB':>13}{'worker RSS':>11}{'store GiB':>10}{'train RSS':>10}{'1st step s':>11}"
             f"{'- load s':>9}{'(CPU s)':>8}{'open s':>7}{'load avg':>16}"]
    for n, p in sorted(res["sizes"].items(), key=lambda kv: int(kv[0])):
        prep, floor, tr = p["prep"], p["floor"], p["train_warm"]
        lines.append(f"{int(n):>14,}{prep['seconds']:>8.1f}{prep['cpu_s']:>11.1f}{floor['seconds']:>12.1f}"
                     f"{floor['cpu_s']:>10.1f}{prep['cpu_s'] / floor['cpu_s']:>9.2f}x"
                     f"{floor.get('out_cpu_s', float('nan')):>11.1f}{prep['cpu_s'] / floor.get('out_cpu_s', float('nan')):>6.2f}x"
                     f"{prep['self_mib']:>13,.0f}"
                     f"{prep['children_mib']:>11,.0f}{prep['store_bytes'] / 2**30:>10.2f}{tr['self_mib']:>10,.0f}"
                     f"{tr['to_first_step_s']:>11.1f}{tr['data_s']:>9.1f}{tr['to_first_step_cpu_s']:>8.1f}"
                     f"{tr['prepare_data_s']:>7.1f}"
                     f"{' ' + str(p['load_average_before'][0]) + '->' + str(p['load_average_after'][0]):>16}")
    two = res["two_processes"]
    one, both = two[1], two[2]
    lines += ["", f"data preparation CPU seconds in a training run, {two['conversations']:,} conversations, "
                  "cold cache: 1 process vs 2 (accelerate, CPU, gloo)",
              f"  1 process:   {one['cpu_s']:.1f} s ({one['built_stores']} store built)",
              f"  2 processes: {both['cpu_s']:.1f} s in total ("
              + ", ".join(f"{q['cpu_s']:.1f}" for q in both["processes"])
              + f" per process; {both['built_stores']} store built), ratio {both['cpu_s'] / one['cpu_s']:.3f}"]
    trl = res.get("trl")
    if trl is None:
        return "\n".join(lines + ["", "TRL: not run (--trl-size 0)"])
    lines += ["", f"TRL {trl['conversations']:,} conversations: load_dataset(json) + _prepare_dataset, "
                  f"cold {trl['cold']['seconds']:.1f} s ({trl['cold']['cpu_s']:.1f} CPU s), "
                  f"warm datasets cache {trl['warm']['seconds']:.1f} s ({trl['warm']['cpu_s']:.1f} CPU s)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sftlab-bench",
                   help="where inputs are generated (default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000, 200_000],
                   help="conversations per preparation point (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                   help="row lengths of the training points (default: %(default)s)")
    p.add_argument("--tokens-per-step", type=int, default=4096, help="(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--store", action="store_true", help="measure the prepared-data store against its goals")
    p.add_argument("--store-sizes", type=int, nargs="+", default=[100_000, 200_000, 1_000_000],
                   help="conversations per store point (default: %(default)s)")
    p.add_argument("--two-size", type=int, default=100_000, help="conversations of the 2-process point")
    p.add_argument("--trl-size", type=int, default=200_000,
                   help="conversations of TRL's cold/warm point (0: no TRL point)")
    p.add_argument("--num-proc", type=int, default=2, help="worker processes of the preparation")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        out = STORE_WORKERS[a.worker](json.loads(a.worker_args))
        import os

        if int(os.environ.get("RANK", "0")) == 0 and a.result:
            a.result.write_text(json.dumps(out))
        return 0
    if a.store:
        print(_store_needs(a), file=sys.stderr)
        res = {"environment": environment(), "load_average_before": load_average()}
        def save(partial):
            if a.out:
                a.out.write_text(json.dumps({**res, "store": partial}, indent=2) + "\n")

        res["store"] = store_goals(a.work, a.store_sizes, a.two_size, a.trl_size, a.num_proc, save)
        res["load_average_after"] = load_average()
        print(store_table(res["store"]))
        if a.out:
            a.out.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    res = {"environment": environment(), "load_average_before": load_average(),
           "tokens_per_step": a.tokens_per_step, "warmup": a.warmup, "steps": a.steps}
    res["preparation"] = preparation(a.work, a.sizes)
    res["training"] = training(a.work, a.lengths, a.tokens_per_step, a.warmup, a.steps)
    res["load_average_after"] = load_average()
    print(table(res))
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
