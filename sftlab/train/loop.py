"""The training loop on accelerate: one function, :func:`train`, read top to bottom.

One optimizer step takes ``micro_batch_size x grad_accum`` rows on each of the ``world_size``
processes. The objective's denominator is the trained weight of the *whole* step, so the loop
first collates every micro-batch of the step, all-reduces their total weight
(``step_normaliser``), and only then runs forward/backward on each micro-batch with
``loss_sum / total_weight x world_size`` (DDP averages gradients over ranks, the factor undoes
that). Gradient synchronisation is skipped (``accelerator.no_sync``) for all but the last
micro-batch. The result does not depend on how the step's rows are split over micro-batches
or processes (DESIGN invariant 1).

The data of each epoch is a deterministic function of (seed, epoch): mixture sample, slice loss
weights, pack, shuffle. A checkpoint stores (epoch, step within the epoch), so a resumed run
rebuilds the same epoch and continues at the same step, with the same optimizer, scheduler and
RNG state: its final weights equal those of an uninterrupted run (DESIGN invariant 8).
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from sftlab.model.adapters import recorded_base
from sftlab.model.attention import use_packed_attention
from sftlab.fingerprints import weights_sha256
from sftlab.train.checkpoint import (choose_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint,
                                     save_final, step_dirs, verify_checkpoint)
from sftlab.errors import UsageError
from sftlab.train.config import TrainConfig
from sftlab.train.curves import plot_curves
from sftlab.train.metrics import MetricsLog
from sftlab.train.data import TrainData, gen_eval_settings, heldout_encoding, prepare_data
from sftlab.train.preemption import SIGNALS
from sftlab.train.throughput import PhaseTimes, Throughput


def train(cfg: TrainConfig, *, resume: bool = False, allow_changes: bool = False,
          fallback_checkpoint: bool = False, config_path: str | None = None,
          trackers: tuple = ()) -> int:
    """Train as ``cfg`` says, into ``cfg.out``; returns the exit code.

    0: done; 1: done but a data check failed (held-out leakage, refusals without a benign
    contrast: RUN/data/stats.json), more records were quarantined than
    ``data.max_quarantined_share`` allows, or stopped on a NaN/inf loss (the last good checkpoint
    stays). The manifest's ``outcome.train.exit_reason`` names the rule that decided. Raises
    ``UsageError`` for unusable input, for a run directory another run holds (``RUN/.lock``),
    and, on ``resume``, for a change of anything that changes the result unless
    ``allow_changes`` (see ``sftlab.train.rundir``), and for a damaged newest checkpoint unless
    ``fallback_checkpoint`` (then the newest intact one is used). ``trackers``: extra
    ``accelerate.tracking.GeneralTracker`` objects, beside those ``log.trackers`` names.
    SIGTERM or SIGINT: 143 or 130, after the current step and a verified checkpoint of it
    (``sftlab.train.preemption``); the lock is released in every case.
    """
    import os

    from sftlab.files import check_run_dir
    from sftlab.train.preemption import Preempted, StopSignals
    from sftlab.train.rundir import RunLock

    run = check_run_dir(cfg.out)
    lock = RunLock(run, config=config_path)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:  # the main process holds the lock
        lock.acquire()
    signals = StopSignals()
    try:
        with signals:
            return _train(cfg, resume=resume, allow_changes=allow_changes, fallback_checkpoint=fallback_checkpoint,
                          trackers=trackers, signals=signals)
    except Preempted as e:  # before the first step, or a second signal: nothing more is written
        if main:
            last = latest_checkpoint(run)
            when = "at once (a second signal)" if signals.deferred else "before training started"
            print(f"sftlab train: stopped by {e.signum.name} {when}; "
                  + (f"the newest checkpoint is {last}" if last else "no checkpoint was written"), file=sys.stderr)
        return e.exit_code
    finally:
        lock.release()


def _train(cfg: TrainConfig, *, resume: bool, allow_changes: bool, fallback_checkpoint: bool,
           trackers: tuple, signals) -> int:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from sftlab.train.metrics import resolve_trackers

    from sftlab.model.objective import micro_batch_loss, step_normaliser

    hf_logging.disable_progress_bar()  # ours is the one that matters
    run = Path(cfg.out)
    if step_dirs(run) and not resume:
        raise UsageError(f"{run} already holds checkpoints ({step_dirs(run)[-1].name}); pass --resume to "
                         "continue that run, or choose another out")
    ckpt = choose_checkpoint(run, fallback=fallback_checkpoint,
                             say=lambda m: print(f"sftlab train: {m}", file=sys.stderr)) if resume else None
    cuda = torch.cuda.is_available()
    try:
        log_with = resolve_trackers(cfg.log.trackers) + list(trackers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    autocast = cfg.model.dtype == "bf16-mixed" or (cuda and cfg.model.dtype == "auto")
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if autocast else "no",
                              log_with=log_with or None,
                              project_config=ProjectConfiguration(project_dir=str(run),
                                                                  logging_dir=str(run / "tensorboard")))
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)

    # -- model, tokenizer, template, data ----------------------------------------------------
    phases = PhaseTimes()
    with phases("load"):
        model, tokenizer, template, role_tokens = load_model_and_tokenizer(cfg)
    old = _read_json(ckpt / "run.json") or _read_json(run / "run.json") if resume and ckpt else None
    changed: list[dict] = []
    # LoRA: the adapter means nothing on other base weights; hashed once, then known by file stamps
    base = weights_sha256(cfg.model.path, known=((old or {}).get("model") or {}).get("base_files")) \
        if cfg.lora.enabled else (None, {})

    def check_resume(data: TrainData) -> None:  # before anything in RUN is written
        diffs = _check_resume(old, cfg, data, tokenizer, template, ckpt, allow_changes, base[0])
        if resume and ckpt is not None:
            _check_checkpoint_fits(ckpt, model, cfg, world)
        if diffs and main:
            print(f"sftlab train: continuing {ckpt} with changed {', '.join(d['path'] for d in diffs)} "
                  "(recorded in run.json segments)", file=sys.stderr)
        changed.extend(diffs)

    with phases("prepare"):
        data = prepare_data(cfg, tokenizer, template, run, write=main, check=check_resume, accelerator=accelerator,
                            plan=_plan_of(old))
    total_steps = data.total_steps(world)
    if main:
        record_manifest(run, cfg, data, model, tokenizer, template, role_tokens, base)
        _start_segment(run, old, _step_of(ckpt) if resume and ckpt else 0, changed)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    scheduler = lr_scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    speed = Throughput(raw, accelerator.device, torch.bfloat16 if autocast else next(raw.parameters()).dtype)

    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": None, "bad_evals": 0,
             "rows_per_step": cfg.optim.micro_batch_size * cfg.optim.grad_accum * world,
             "config_sha256": cfg.sha256()}
    if resume and ckpt is not None:
        state = _resume_state(state, load_checkpoint(ckpt, model=raw, optimizer=optimizer,
                                                     scheduler=scheduler, rank=rank), ckpt, main)
        if any(d["path"].startswith("config.optim.") for d in changed):
            _apply_optim_settings(optimizer, scheduler, cfg)  # the checkpoint's state would win
    step = state["step"]
    if log_with:
        from sftlab.manifest import flatten

        accelerator.init_trackers(run.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in flatten(cfg.to_dict()).items()})
    metrics = MetricsLog(run / "metrics.jsonl", enabled=main, accelerator=accelerator,
                         keep_until=(step, state["epoch"], state["step_in_epoch"]) if resume else None)
    bar = tqdm(total=total_steps, initial=step, disable=not (main and cfg.log.progress),
               desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)

    def checkpoint(at: int) -> None:
        with phases("save"):
            save_checkpoint(run, at, model=raw, tokenizer=tokenizer, optimizer=optimizer,
                            scheduler=scheduler, state=state, keep_last=cfg.checkpointing.keep_last,
                            manifest=_read_json(run / "run.json") if main else None, rank=rank,
                            barrier=accelerator.wait_for_everyone)

    # -- the loop: epochs of optimizer steps of micro-batches ---------------------------------
    model.train()
    reduction = cfg.loss.normalisation
    stop = signalled = None
    phases.start("train")
    signals.defer()  # from here a stop signal ends the run after the current step, with a checkpoint
    while step < total_steps and stop is None:
        epoch = state["epoch"]
        rows = data.epoch_rows(epoch)
        if state["step_in_epoch"] == 0:
            metrics.write({"epoch": epoch, "realised_mixture": data.realised_mixture(epoch)})
        for s in range(state["step_in_epoch"], data.steps_in_epoch(epoch, world)):
            t0 = time.perf_counter()
            # collate the whole step first: the denominator is its total trained weight, all ranks
            micro = data.micro_batches(rows, s, rank, world)
            counts = [sum(int(b["seq_lengths"].sum()) for b in micro), sum(_trained_tokens(b) for b in micro),
                      sum(int((b["seq_lengths"].long() ** 2).sum()) for b in micro)]  # attention FLOPs
            micro = [_to_device(b, accelerator.device) for b in micro]
            total_weight = step_normaliser(micro, reduction=reduction, all_reduce=True)
            loss_sum = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1  # gradients are all-reduced once, after the last one
                with (nullcontext() if last else accelerator.no_sync(model)), accelerator.autocast():
                    loss = micro_batch_loss(model, batch, total_weight, reduction=reduction,
                                            chunk_size=cfg.loss.chunk_size, world_size=world)
                accelerator.backward(loss)
                loss_sum += loss.detach().float()
            asked = [float(signals.received == s) for s in SIGNALS]  # a stop signal on any process
            sums = torch.tensor([loss_sum.item(), *counts, *asked], dtype=torch.float64)  # one sync per step
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
            signalled = next((s for s, n in zip(SIGNALS, sums[-len(SIGNALS):]) if n > 0), None)
            step_loss = sums[0].item() / world
            grad_norm = None
            if cfg.optim.max_grad_norm:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm))
            if not math.isfinite(step_loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
                bar.close()
                return _stop_on_nan(step + 1, step_loss, grad_norm, run, metrics, main)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state.update(step=step, step_in_epoch=s + 1)
            seconds = max(time.perf_counter() - t0, 1e-9)
            tokens_per_s = sums[1].item() / seconds
            mfu = speed.mfu(int(sums[1].item()), int(sums[3].item()), seconds, world)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}",
                            **({"mfu": f"{mfu:.1%}"} if mfu is not None else {}), refresh=False)
            bar.update(1)  # after the postfix: the bar shows this step's loss
            if step % cfg.log.every_n_steps == 0 or step == total_steps:
                metrics.write({"step": step, "epoch": epoch, "loss": step_loss,
                               "lr": lr, "tokens_per_s": tokens_per_s, "mfu": mfu,
                               "trained_tokens": int(sums[2].item()), "grad_norm": grad_norm})
            every = cfg.eval.every_n_steps
            if (data.eval_sets or data.gen_prompts) and ((every and step % every == 0) or step >= total_steps):
                with phases("eval"):
                    stop = _validate(raw, data, cfg, accelerator, metrics, step, state, tokenizer, template)
            if stop is None and step >= total_steps:
                stop = "done"
            if stop is None and signalled is not None:
                stop = f"stopped by {signalled.name} after step {step} of {total_steps}"
            else:
                signalled = None  # the run ended at this step anyway
            every = cfg.checkpointing.every_n_steps
            if stop is not None or (every and step % every == 0):
                checkpoint(step)  # after validation, so early-stopping counters resume too
            if stop is not None:
                break
        else:
            state.update(epoch=epoch + 1, step_in_epoch=0)
    bar.close()
    phases.stop("train")
    if signalled is not None:  # checkpoint(step) above wrote this step
        return _stop_on_signal(run, step, stop, signalled, metrics, main)

    # -- the end: final model, curves, manifest ------------------------------------------------
    accelerator.wait_for_everyone()
    code, reason = exit_rule(data, cfg)
    if main:
        merge = cfg.lora.enabled and cfg.lora.merge_on_save
        base = raw.peft_config["default"].base_model_name_or_path if cfg.lora.enabled else None
        with phases("save"):
            save_final(run / "final", raw, tokenizer, template, merge=merge,
                       adapter_base=recorded_base(base) if base else None)
        plot_curves(run / "metrics.jsonl", run / "curves.png", title=f"{run.name}: {stop or 'done'}")
        finish_manifest(run, cfg, step, stop, exit_rule=(code, reason))
        from sftlab.manifest import update_manifest

        update_manifest(run, timing=phases.describe(_read_json(run / "run.json"), resumed=bool(resume and ckpt)),
                        throughput=speed.describe())
    metrics.close()
    accelerator.wait_for_everyone()
    return code


def exit_rule(data: TrainData, cfg: TrainConfig) -> tuple[int, str]:
    """``(exit code, the rule that decided it)`` of a run that trained to the end."""
    from sftlab.train.data import quarantine_rule

    if data.failed_checks:
        return 1, "data check failed: " + ", ".join(c["name"] for c in data.failed_checks)
    rule = quarantine_rule(data.records, data.quarantine_reasons, cfg.data.max_quarantined_share,
                           str(Path(cfg.out) / "data" / "quarantine.jsonl"))
    return rule or (0, "trained; no record quarantined and every data check passed")


def lr_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """The ``optim.schedule`` with its linear warm-up, as a ``LambdaLR`` (its state is JSON).

    Step k (counted from 1) of a W-step warm-up runs at ``lr * k / W``, so the first step runs at
    ``lr / W``, never at 0; after the warm-up, ``cosine`` and ``linear`` decay from ``lr`` towards 0
    over the remaining steps (the last step stays above 0) and ``constant`` keeps ``lr``::

        >>> import torch
        >>> from sftlab.train.config import load_config
        >>> cfg = load_config(None, ["model.path=m", "data.train=[t]", "out=o", "optim.lr=1.0",
        ...                          "optim.schedule=linear", "optim.warmup_steps=2"])
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched, rates = lr_scheduler(opt, cfg, 6), []
        >>> for _ in range(6):
        ...     rates.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
        >>> rates
        [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    o = cfg.optim
    warmup = o.warmup_steps if o.warmup_steps is not None else math.ceil(o.warmup_ratio * total_steps)
    decay = max(1, total_steps - warmup)
    kind = o.schedule

    def factor(s: int) -> float:  # s: optimizer steps taken so far (0 for the first step)
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / decay)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- model ---------------------------------------------------------------------------------------

_DTYPES = {"auto": None, "float32": torch.float32, "bf16-mixed": torch.float32, "bfloat16": torch.bfloat16}


def load_model_and_tokenizer(cfg: TrainConfig):
    """``(model, tokenizer, template, role_tokens)``: the base model ready to train (LoRA and
    gradient checkpointing applied), the tokenizer with the training template installed."""
    from sftlab.model.loading import load_base_model, load_tokenizer
    from sftlab.model.objective import check_head
    from sftlab.tokens.role_tokens import add_role_tokens, install_template
    from sftlab.tokens.templates import TemplateError, get_template

    path = Path(cfg.model.path)
    name = str(path.resolve()) if path.exists() else cfg.model.path  # adapters record the base path
    try:
        model, tokenizer = load_base_model(name, gguf_file=cfg.model.gguf_file,
                                           dtype=_DTYPES[cfg.model.dtype],
                                           trust_remote_code=cfg.model.trust_remote_code)
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.model.trust_remote_code, what="tokenizer=")
        template = template_of(cfg, tokenizer)
        if cfg.loss.chunk_size is not None:
            check_head(model)  # the chunked loss must see the logits the model itself would give
    except (OSError, ValueError, TemplateError) as e:
        raise UsageError(f"model.path={cfg.model.path}: {e}".splitlines()[0]) from None
    role_tokens = add_role_tokens(tokenizer, model, template)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UsageError(f"tokenizer={cfg.tokenizer or cfg.model.path}: {len(tokenizer)} tokens, but the "
                         f"model's embedding has {rows} rows (another vocabulary); give the tokenizer "
                         "that belongs to model.path")
    if role_tokens["added"]:
        template = get_template(cfg.template, tokenizer)  # the fingerprint covers the tokenizer
    install_template(tokenizer, template)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    model.sftlab_packed_attention = use_packed_attention(model)
    if cfg.lora.enabled:
        import warnings

        from peft import LoraConfig, get_peft_model

        try:
            with warnings.catch_warnings():
                # peft reads the deprecated is_gradient_checkpointing; the warning says nothing to users
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                targets = cfg.lora.target_modules  # "all-linear" goes to peft as peft spells it
                model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                         lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                                                         use_dora=cfg.lora.use_dora,
                                                         target_modules=targets if isinstance(targets, str)
                                                         else list(targets)))
        except ValueError as e:  # peft: target modules not found in the base model
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear)})
            raise UsageError(f"lora.target_modules={cfg.lora.target_modules}: "
                             f"{str(e).splitlines()[0][:200]}; expected names of this model's linear "
                             f"layers: {', '.join(linear[:12])}") from None
    if cfg.optim.neftune_alpha:
        from sftlab.model.neftune import activate_neftune

        activate_neftune(model, cfg.optim.neftune_alpha)
    model.train()
    return model, tokenizer, template, role_tokens


def load_tokenizer_and_template(cfg: TrainConfig):
    """``(tokenizer, template)`` exactly as ``load_model_and_tokenizer`` leaves them (role tokens
    added, template installed), without loading the model's weights: what ``sftlab prepare``
    needs to build the store that training will find."""
    from sftlab.model.loading import load_tokenizer
    from sftlab.tokens.role_tokens import add_role_tokens, install_template
    from sftlab.tokens.templates import get_template

    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer, trust_remote_code=cfg.model.trust_remote_code, what="tokenizer=")
    else:
        tokenizer = load_tokenizer(cfg.model.path, gguf_file=cfg.model.gguf_file,
                                   trust_remote_code=cfg.model.trust_remote_code, what="model.path=")
    template = template_of(cfg, tokenizer)
    if add_role_tokens(tokenizer, None, template)["added"]:
        template = get_template(cfg.template, tokenizer)
    install_template(tokenizer, template)
    return tokenizer, template


def template_of(cfg: TrainConfig, tokenizer):
    """The config's ``template`` for ``tokenizer``; a template that cannot be used is a
    ``UsageError`` naming ``template=`` (or, for the tokenizer's own, the model)."""
    from sftlab.tokens.templates import TemplateError, get_template

    try:
        return get_template(cfg.template, tokenizer)
    except (TemplateError, OSError, ValueError) as e:
        key = f"template={cfg.template}" if cfg.template else f"model.path={cfg.model.path} (its own chat template)"
        raise UsageError(f"{key}: {e}".splitlines()[0]) from None


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices, not biases or norm scales (the usual AdamW split)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


# -- validation ----------------------------------------------------------------------------------

def evaluate(model, data: TrainData, cfg: TrainConfig, accelerator) -> dict[str, float]:
    """Held-out loss per slice and over all slices: the training objective, normalised per slice
    (``sftlab.evaluation.loss.slice_sums``, the scorer ``sftlab eval`` uses too).

    Each process scores every ``world_size``-th example of a slice; sums are all-reduced.
    """
    from sftlab.evaluation.loss import slice_sums

    names = sorted(data.eval_sets)
    rows = {name: data.eval_rows(name, accelerator.process_index, accelerator.num_processes) for name in names}
    sums = slice_sums(model, rows, data.pad_id, micro_batch_size=cfg.eval.micro_batch_size,
                      reduction=cfg.loss.normalisation, chunk_size=cfg.loss.chunk_size,
                      device=accelerator.device, autocast=accelerator.autocast)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    out = {"all": _ratio(sums[:, 0].sum(), sums[:, 1].sum())}
    out.update({name: _ratio(sums[j, 0], sums[j, 1]) for j, name in enumerate(names)})
    return out


def _ratio(num, den) -> float | None:
    return float(num / den) if den > 0 else None


def _validate(model, data, cfg, accelerator, metrics, step: int, state: dict,
              tokenizer=None, template=None) -> str | None:
    """Log the eval losses (and generation-based refusal rates when ``eval.prompts`` names
    prompts); return a stop reason when early stopping says so."""
    losses = evaluate(model, data, cfg, accelerator) if data.eval_sets else {}
    if losses:
        metrics.write({"step": step, "eval_loss": losses})
    if data.gen_prompts and accelerator.is_main_process:
        from sftlab.evaluation.evaluate import generation_eval

        metrics.write({"step": step, "gen_eval": generation_eval(model, tokenizer, template, data.gen_prompts,
                                                                 gen_eval_settings(cfg))})
    if data.gen_prompts:
        accelerator.wait_for_everyone()
    es = cfg.eval.early_stopping
    value = losses.get(es.metric.removeprefix("eval_loss/"))
    if es.patience is None or value is None:
        return None
    if state["best"] is None or value < state["best"]:
        state.update(best=value, bad_evals=0)
        return None
    state["bad_evals"] += 1
    if state["bad_evals"] >= es.patience:
        return (f"early stop at step {step}: {es.metric} did not improve for {es.patience} "
                f"validations (best {state['best']:.4f})")
    return None


# -- small helpers of the loop -------------------------------------------------------------------

def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _trained_tokens(batch: dict) -> int:
    """Targets with a non-zero weight (the first token of an example is never a target)."""
    w, pos = batch["loss_weights"][:, 1:], batch["position_ids"][:, 1:]
    return int(((w != 0) & (pos != 0)).sum().item())


def _resume_state(fresh: dict, saved: dict, ckpt: Path, main: bool) -> dict:
    """The checkpoint's loop state, checked against this run's global batch."""
    if saved.get("rows_per_step", fresh["rows_per_step"]) != fresh["rows_per_step"]:
        raise UsageError(f"{ckpt} was written with {saved['rows_per_step']} rows per optimizer step, this run "
                         f"takes {fresh['rows_per_step']} (micro_batch_size x grad_accum x processes); "
                         "resume with the same global batch so the data position means the same rows")
    if main and saved.get("config_sha256") != fresh["config_sha256"]:
        print(f"sftlab train: note: the config differs from the one that wrote {ckpt}; "
              "continuing with the new one", file=sys.stderr)
    return {**saved, "config_sha256": fresh["config_sha256"]}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.removeprefix("step-"))


def _check_resume(old: dict | None, cfg: TrainConfig, data: TrainData, tokenizer, template,
                  ckpt: Path | None, allow_changes: bool, base_sha256: str | None = None) -> list[dict]:
    """Differences that change the result between the checkpoint's run and this one; refused
    (``UsageError`` listing them) unless ``allow_changes``. A LoRA run also compares the base
    model's weights (``base_sha256``): its adapter means nothing on other weights at the same path."""
    if old is None or ckpt is None:
        return []
    from sftlab.manifest import tokenizer_fingerprint
    from sftlab.train.rundir import refuse_message, resume_differences

    new = {"config": cfg.to_dict(), "data": {"splits": data.splits},
           "template": template.describe(), "tokenizer": tokenizer_fingerprint(tokenizer),
           "policy": data.policy.manifest_entry() if data.policy is not None else None}
    if cfg.lora.enabled:
        new["model"] = {"base_sha256": base_sha256}
    diffs = resume_differences(old, new)
    if diffs and not allow_changes:
        raise UsageError(refuse_message(ckpt, diffs))
    return diffs


def _check_checkpoint_fits(ckpt: Path, model, cfg: TrainConfig, world: int) -> None:
    """What would make loading ``ckpt`` fail, refused before anything in RUN is written: another
    global batch, weights of another shape or kind (LoRA on/off, rank, targets, base model)."""
    from sftlab.train.checkpoint import weights_mismatch

    saved = _read_json(ckpt / "state.json") or {}
    rows = cfg.optim.micro_batch_size * cfg.optim.grad_accum * world
    if saved.get("rows_per_step", rows) != rows:
        raise UsageError(f"{ckpt} was written with {saved['rows_per_step']} rows per optimizer step, this run "
                         f"takes {rows} (micro_batch_size x grad_accum x processes); resume with the same "
                         "global batch so the data position means the same rows; nothing was changed")
    why = weights_mismatch(ckpt, model)
    if why is not None:
        raise UsageError(f"--resume: {ckpt} cannot be continued by this run: {why}; resume with the "
                         "settings that wrote it or train into another out; nothing was changed")


def _plan_of(old: dict | None) -> int | None:
    """A resumed run draws its epochs as it started (run.json ``mixture.plan``; a run from before
    plans were recorded drew plan 1); a new run draws the current plan (``None``)."""
    from sftlab.train.mixture import PLAN_VERSION

    if old is None:
        return None
    plan = (old.get("mixture") or {}).get("plan", 1)
    if plan not in range(1, PLAN_VERSION + 1):
        raise UsageError(f"run.json: mixture.plan = {plan!r}: this sftlab draws epoch plans 1 to {PLAN_VERSION}; "
                         "resume with the sftlab version that started the run")
    return plan


def _apply_optim_settings(optimizer, scheduler, cfg: TrainConfig) -> None:
    """After loading a checkpoint: this run's lr, betas and weight decay, not the saved ones,
    on the saved schedule position (so the manifest's config is what is used)."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for i, (group, lam) in enumerate(zip(optimizer.param_groups, scheduler.lr_lambdas)):
        group.update(initial_lr=o.lr, lr=o.lr * lam(scheduler.last_epoch), betas=tuple(o.betas),
                     weight_decay=o.weight_decay if i == 0 else 0.0)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _start_segment(run: Path, old: dict | None, start: int, changed: list[dict]) -> None:
    from sftlab.manifest import update_manifest
    from sftlab.train.rundir import segments

    update_manifest(run, segments=segments(old, start, _read_json(run / "run.json") or {}, changed))


def _stop_on_nan(step: int, loss: float, grad_norm: float | None, run: Path, metrics, main: bool) -> int:
    last = latest_checkpoint(run)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
    message = (f"step {step}: the loss is {loss} (gradient norm {grad_norm}); training stopped before "
               f"this step changed any weight; {where}. Lower optim.lr or check the data of this "
               "step, then rerun with --resume.")
    metrics.write({"step": step, "error": message})
    metrics.close()
    if main:
        from sftlab.manifest import update_manifest

        print(f"sftlab train: {message}", file=sys.stderr)
        update_manifest(run, outcome={"train": train_outcome(
            run, step - 1, f"non-finite loss at step {step}", (1, "stopped on a NaN/inf loss"))})
    return 1


def _stop_on_signal(run: Path, step: int, stop: str, signum, metrics, main: bool) -> int:
    """After a stop signal: check the checkpoint just written, record why the run stopped; 128 + signum."""
    code = 128 + int(signum)
    metrics.close()
    if main:
        from sftlab.manifest import update_manifest

        last = latest_checkpoint(run)
        problems = verify_checkpoint(last) if last is not None else ["no checkpoint was written"]
        saved = (f"{last} written and verified" if not problems
                 else f"{last} fails its check ({'; '.join(problems[:2])})")
        segs = (_read_json(run / "run.json") or {}).get("segments") or []
        if segs:
            segs[-1]["to_step"] = step
        update_manifest(run, segments=segs, outcome={"train": train_outcome(
            run, step, stop, (code, f"{stop}; checkpoint {saved}; continue with --resume"))})
        print(f"sftlab train: {stop}; checkpoint {saved}", file=sys.stderr)
    return code


# -- manifest ------------------------------------------------------------------------------------

def record_manifest(run: Path, cfg: TrainConfig, data: TrainData, model, tokenizer, template,
                    role_tokens: dict, base: tuple = (None, {})) -> None:
    """Write the run's data, template, tokenizer, masking, packing, mixture and config sections;
    ``base`` is ``weights_sha256`` of the base model (its hash and per-file stamps)."""
    from sftlab.manifest import config_hash, environment, tokenizer_fingerprint, update_manifest
    trained = int(data.table.trained.sum())
    total = int(data.table.lengths.sum())
    source = getattr(model, "sftlab_source", None) or {}
    sections = dict(
        kind="train", data={"splits": data.splits, "failed_checks": data.failed_checks,
                            "store": data.store_info},
        template={**template.describe(), "role_tokens": role_tokens},
        tokenizer=tokenizer_fingerprint(tokenizer),
        masking={"mode": "last_turn" if cfg.encoding.last_turn_only else "all_assistant_turns",
                 "max_length": cfg.encoding.max_length, "last_turn_only": cfg.encoding.last_turn_only,
                 "reasoning": cfg.encoding.reasoning, "trained_tokens": trained, "total_tokens": total,
                 "trained_token_share": round(trained / total, 6) if total else None,
                 "turns": cfg.encoding.turns, "overflow": cfg.encoding.overflow,
                 "mask_source": cfg.encoding.mask_source, "heldout_encoding": heldout_encoding(cfg),
                 **data.table.encoding_summary()},
        packing={**data.epoch_rows(0).stats(cfg.row_length, cfg.packing.mode),
                 "attention": ("causal SDPA per example" if getattr(model, "sftlab_packed_attention", False)
                               else "block-diagonal mask")},
        mixture={**data.mixture.describe(data.slices),
                 "sampling": {"weights": cfg.mixture.sampling_weights, "temperature": cfg.mixture.temperature}},
        model={"base": cfg.model.path, "dtype": cfg.model.dtype, "gguf_file": cfg.model.gguf_file,
               "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
               "neftune": {"alpha": cfg.optim.neftune_alpha, "length": "per example",
                           "scale": "alpha / sqrt(L * hidden_size)"} if cfg.optim.neftune_alpha else None,
               "notes": source.get("notes") or source.get("note"), "source": source or None,
               "base_sha256": base[0], "base_files": base[1] or None},
        config=cfg.to_dict(), config_sha256=config_hash(cfg.to_dict()), seed=cfg.seed, **environment())
    if data.policy is not None:
        sections["policy"] = {**data.policy.manifest_entry(), "path": cfg.data.policy}
    if data.gen_prompts:
        sections["decoding"] = [{"purpose": "gen_eval", "prompts": list(cfg.eval.prompts), **gen_eval_settings(cfg)}]
    update_manifest(run, **sections)


def train_outcome(run: Path, step: int, stop: str | None, exit_rule: tuple[int, str] | None) -> dict:
    """The manifest's ``outcome.train``: steps, why it stopped, the last logged train loss, the last
    eval loss per slice, and the exit code with the rule that decided it."""
    from sftlab.train.metrics import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r and "step" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    out = {"steps": step, "stopped": stop or "done", "final_train_loss": losses[-1] if losses else None,
           "eval_loss": evals[-1] if evals else None}
    if exit_rule is not None:
        out.update(exit_code=exit_rule[0], exit_reason=exit_rule[1])
    return out


def finish_manifest(run: Path, cfg: TrainConfig, step: int, stop: str | None,
                    exit_rule: tuple[int, str] | None = None) -> None:
    from sftlab.train.metrics import read_metrics
    from sftlab.manifest import update_manifest

    realised = [{"epoch": r["epoch"], "slices": r["realised_mixture"]}
                for r in read_metrics(run / "metrics.jsonl") if "realised_mixture" in r]
    segs = (_read_json(run / "run.json") or {}).get("segments") or []
    if segs:
        segs[-1]["to_step"] = step
    update_manifest(run, mixture={"realised": realised}, segments=segs,
                    outcome={"train": train_outcome(run, step, stop, exit_rule)},
                    artifacts={"final": "final", "metrics": "metrics.jsonl", "curves": "curves.png",
                               "checkpoints": "checkpoints", "quarantine": "data/quarantine.jsonl",
                               "stats": "data/stats.json",
                               "training": {"steps": step, "stopped": stop or "done"}})
