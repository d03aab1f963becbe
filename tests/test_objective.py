"""The objective on a real tiny Llama (fp32): packing, accumulation, weights, chunking, boundaries."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from sftlab.model.objective import (check_head, chunked_token_nll, micro_batch_loss, output_head,
                              shift_targets, step_normaliser, weighted_token_loss)
from sftlab.tokens.packing import collate, pack, pad_rows

VOCAB = 97


@dataclass(frozen=True)
class Ex:
    input_ids: list
    loss_weights: list


@pytest.fixture(scope="module")
def model():
    from sftlab.demo.tiny import build_model
    torch.set_num_threads(1)
    return build_model(vocab_size=VOCAB, hidden=64, layers=2)


def make_examples(n=8, seed=0):
    """Examples of different lengths with a prompt (weight 0) and a response of weight 1, 2 or 0.5."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt, response = 2 + i % 4, 3 + (5 * i) % 7
        w = [1.0, 2.0, 0.5][i % 3]
        ids = torch.randint(0, VOCAB, (prompt + response,), generator=g).tolist()
        out.append(Ex(ids, [0.0] * prompt + [w] * response))
    return out


def run_step(model, batches, *, reduction="token", chunk_size=1024, world_size=1):
    """One optimizer step's loss and accumulated gradient, as the training loop computes them."""
    model.zero_grad(set_to_none=True)
    total = step_normaliser(batches, reduction=reduction)
    loss = torch.zeros(())
    for b in batches:
        part = micro_batch_loss(model, b, total, reduction=reduction, chunk_size=chunk_size,
                                world_size=world_size)
        part.backward()
        loss += part.detach()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss, grads


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def per_token_nll(model, ex):
    """-log p(x[t] | x[<t]) for t >= 1 of one example, from the model's own full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ex.input_ids[1:]), reduction="none")


def test_docstring_examples_hold():
    import doctest

    import sftlab.model.objective
    assert doctest.testmod(sftlab.model.objective).failed == 0


@pytest.mark.parametrize("reduction", ["token", "per_sequence"])
def test_packed_equals_unpacked(model, reduction):
    exs = make_examples()
    packed = [collate(pack(exs, 24), pad_id=0)]
    assert packed[0]["input_ids"].shape[0] < len(exs)           # really packed
    unpacked = [collate(pad_rows(exs, 24), pad_id=0)]
    flash = [collate(pack(exs, 24), pad_id=0, for_flash=True)]
    loss_p, grad_p = run_step(model, packed, reduction=reduction)
    loss_u, grad_u = run_step(model, unpacked, reduction=reduction)
    loss_f, grad_f = run_step(model, flash, reduction=reduction)
    assert step_normaliser(packed, reduction=reduction) == step_normaliser(unpacked, reduction=reduction)
    assert loss_p.item() == pytest.approx(loss_u.item(), rel=1e-5)
    assert loss_f.item() == pytest.approx(loss_u.item(), rel=1e-5)
    assert rel(grad_p, grad_u) < 1e-5 and rel(grad_f, grad_u) < 1e-5


def test_batch_8_equals_micro_batch_2_times_accumulation_4_and_two_ranks(model):
    exs = make_examples()
    rows = pad_rows(exs, 24)
    loss_8, grad_8 = run_step(model, [collate(rows, pad_id=0)])
    micro = [collate(rows[k:k + 2], pad_id=0) for k in range(0, 8, 2)]
    loss_2x4, grad_2x4 = run_step(model, micro)
    assert loss_2x4.item() == pytest.approx(loss_8.item(), rel=1e-5)
    assert rel(grad_2x4, grad_8) < 1e-5
    # Two ranks of 2 micro-batches each: each rank scales by world size, then DDP averages.
    total = step_normaliser(micro)                     # what the all-reduce over ranks gives
    rank_grads, logged = [], 0.0
    for rank_batches in (micro[:2], micro[2:]):
        model.zero_grad(set_to_none=True)
        for b in rank_batches:
            part = micro_batch_loss(model, b, total, world_size=2)
            part.backward()
            logged += part.item() / 2
        rank_grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel((rank_grads[0] + rank_grads[1]) / 2, grad_8) < 1e-5
    assert logged == pytest.approx(loss_8.item(), rel=1e-5)


def test_weights_scale_the_loss_as_stated(model):
    exs = make_examples(3)
    nll = [per_token_nll(model, e) for e in exs]

    def expected(examples):
        num = sum((torch.tensor(e.loss_weights[1:]) * n).sum() for e, n in zip(examples, nll))
        return (num / sum(sum(e.loss_weights[1:]) for e in examples)).item()

    def loss(examples):
        batch = collate(pack(examples, 64), pad_id=0)
        with torch.no_grad():
            return micro_batch_loss(model, batch, step_normaliser([batch])).item()

    assert loss(exs) == pytest.approx(expected(exs), rel=1e-5)
    # doubling every weight of one message (the response of example 1) changes the loss to
    # (sum w*nll + w1*nll1) / (W + W1), computed by hand:
    doubled = list(exs)
    doubled[1] = Ex(exs[1].input_ids, [2 * w for w in exs[1].loss_weights])
    w1 = torch.tensor(exs[1].loss_weights[1:])
    by_hand = ((sum((torch.tensor(e.loss_weights[1:]) * n).sum() for e, n in zip(exs, nll))
                + (w1 * nll[1]).sum()) / (sum(sum(e.loss_weights[1:]) for e in exs) + w1.sum())).item()
    assert loss(doubled) == pytest.approx(by_hand, rel=1e-5)
    assert abs(loss(doubled) - loss(exs)) > 1e-4
    # every weight times c leaves the normalised loss unchanged
    scaled = [Ex(e.input_ids, [3.5 * w for w in e.loss_weights]) for e in exs]
    assert loss(scaled) == pytest.approx(loss(exs), rel=1e-6)


def test_chunked_equals_plain(model):
    exs = make_examples()
    batches = [collate(pack(exs, 24), pad_id=0)]
    loss_c, grad_c = run_step(model, batches, chunk_size=5)
    loss_p, grad_p = run_step(model, batches, chunk_size=None)
    assert loss_c.item() == pytest.approx(loss_p.item(), rel=1e-6)
    assert rel(grad_c, grad_p) < 1e-5
    loss_s, _ = run_step(model, batches, reduction="per_sequence", chunk_size=3)
    loss_sp, _ = run_step(model, batches, reduction="per_sequence", chunk_size=None)
    assert loss_s.item() == pytest.approx(loss_sp.item(), rel=1e-6)


def test_chunked_nll_never_holds_all_logits():
    torch.manual_seed(0)
    N, H, V = 300, 16, 2000
    head = torch.nn.Linear(H, V, bias=True)
    hidden = torch.randn(N, H, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        nll = chunked_token_nll(hidden, targets, head, chunk_size=32)
    assert max(saved) < N * V // 4                       # no [N, V] tensor kept for backward
    full = F.cross_entropy(head(hidden), targets, reduction="none")
    assert torch.allclose(nll, full, rtol=1e-6, atol=1e-6)
    nll.sum().backward()
    g_chunked = hidden.grad.clone()
    hidden.grad = None
    full.sum().backward()
    assert rel(g_chunked, hidden.grad) < 1e-6


def test_attention_never_crosses_a_boundary(model):
    a, b = Ex([5, 6, 7, 8, 9], [0, 1, 1, 1, 1]), Ex([10, 11, 12, 13], [0, 0, 1, 1])
    a_changed = Ex([50, 60, 70, 80, 90], [0, 0, 0, 0, 0])
    a_silent = Ex(a.input_ids, [0] * 5)
    for_b = []
    for first in (a_silent, a_changed):
        batch = collate(pack([first, b], 9), pad_id=0)
        assert batch["input_ids"].shape == (1, 9)
        with torch.no_grad():
            for_b.append(micro_batch_loss(model, batch, step_normaliser([batch])).item())
    assert for_b[0] == for_b[1]
    alone = collate(pad_rows([b], 9), pad_id=0)
    with torch.no_grad():
        assert for_b[0] == pytest.approx(micro_batch_loss(model, alone, 2.0).item(), rel=1e-5)


def test_first_token_of_an_example_is_never_a_target_of_the_previous_one(model):
    a = Ex([5, 6, 7], [0, 1, 1])
    b = Ex([8, 9, 10], [1, 1, 1])                 # weight on b's first token: nothing can predict it
    batch = collate(pack([a, b], 6), pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    targets, weights = shift_targets(batch["input_ids"], batch["loss_weights"], batch["position_ids"])
    assert targets.tolist() == [[6, 7, 8, 9, 10]]
    assert weights.tolist() == [[1, 1, 0, 1, 1]]          # "8 after 7" is not trained
    assert step_normaliser([batch]).item() == 4
    by_hand = (per_token_nll(model, a).sum() + per_token_nll(model, b).sum()).item() / 4
    with torch.no_grad():
        assert micro_batch_loss(model, batch, 4.0).item() == pytest.approx(by_hand, rel=1e-5)


def test_padding_with_pad_equal_to_eos_keeps_the_eos_trained(model):
    eos = 3
    exs = [Ex([9, 4, eos], [0, 1, 1]), Ex([8, 7, 6, 5, eos], [0, 0, 1, 1, 1])]
    batch = collate(pad_rows(exs, 8), pad_id=eos, max_length=8)
    assert step_normaliser([batch]).item() == 5          # both eos targets counted, padding not
    by_hand = sum((torch.tensor(e.loss_weights[1:]) * per_token_nll(model, e)).sum() for e in exs) / 5
    with torch.no_grad():
        got = micro_batch_loss(model, batch, 5.0).item()
    assert got == pytest.approx(by_hand.item(), rel=1e-5)


def test_reference_loss_from_logits_matches_hand_sum(model):
    ex = make_examples(1)[0]
    batch = collate(pad_rows([ex], 16), pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    got = weighted_token_loss(logits, batch["input_ids"], batch["loss_weights"], batch["position_ids"])
    want = (torch.tensor(ex.loss_weights[1:]) * per_token_nll(model, ex)).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_empty_step_gives_zero_loss_and_zero_gradient(model):
    batch = collate(pad_rows([Ex([1, 2, 3], [0, 0, 0])], 4), pad_id=0)
    loss, grads = run_step(model, [batch])
    assert loss.item() == 0 and grads.abs().max().item() == 0
    with pytest.raises(ValueError, match="reduction must be one of"):
        step_normaliser([batch], reduction="mean")


def test_softcapped_head_is_supported_and_an_unknown_one_is_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          final_logit_softcapping=0.5, attn_implementation="eager")
    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(config).float().eval()
    head, transform = output_head(gemma)
    assert transform is not None
    check_head(gemma)
    batches = [collate(pack(make_examples(4), 24), pad_id=0)]
    loss_c, grad_c = run_step(gemma, batches, chunk_size=4)
    loss_p, grad_p = run_step(gemma, batches, chunk_size=None)
    assert loss_c.item() == pytest.approx(loss_p.item(), rel=1e-6)
    assert rel(grad_c, grad_p) < 1e-5

    from sftlab.demo.tiny import build_model
    llama = build_model(vocab_size=VOCAB, hidden=32, layers=1)
    llama.config.final_logit_softcapping = 0.5      # Llama's forward ignores it: the heads disagree
    with pytest.raises(ValueError, match="differs from the model's logits"):
        check_head(llama)


def test_per_sequence_is_the_mean_of_per_example_means(model):
    exs = make_examples(4)
    batch = collate(pack(exs, 24), pad_id=0)
    assert step_normaliser([batch], reduction="per_sequence").item() == 4
    means = [((torch.tensor(e.loss_weights[1:]) * per_token_nll(model, e)).sum()
              / sum(e.loss_weights[1:])).item() for e in exs]
    with torch.no_grad():
        got = micro_batch_loss(model, batch, 4, reduction="per_sequence").item()
    assert got == pytest.approx(sum(means) / 4, rel=1e-5)


def _ddp_worker(rank, world, port, out_dir):
    import os
    from contextlib import nullcontext

    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from sftlab.demo.tiny import build_model
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ddp = DistributedDataParallel(build_model(vocab_size=VOCAB, hidden=64, layers=2))
        rows = pad_rows(make_examples(), 24)[rank * 4:(rank + 1) * 4]   # ranks see different weights
        micro = [collate(rows[k:k + 2], pad_id=0) for k in (0, 2)]
        total = step_normaliser(micro, all_reduce=True)
        logged = torch.zeros(())
        for i, b in enumerate(micro):
            with ddp.no_sync() if i < len(micro) - 1 else nullcontext():
                loss = micro_batch_loss(ddp, b, total, world_size=world)
                loss.backward()
            logged += loss.detach() / world
        dist.all_reduce(logged)
        grads = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])
        save_file({"grads": grads, "loss": logged, "total": total.float()}, f"{out_dir}/rank{rank}.safetensors")
        dist.barrier()  # no collective in flight on either rank when the group is torn down
    finally:
        dist.destroy_process_group()
    # gloo's background threads can abort the interpreter's own shutdown ("terminate called without
    # an active exception") after the work is done and saved; leave without running C++ destructors.
    os._exit(0)


def test_two_ranks_with_ddp_equal_one_process(model, tmp_path):
    """Two real gloo processes, 2 micro-batches of 2 each: the step equals batch 8 in one process."""
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    loss_8, grad_8 = run_step(model, [collate(pad_rows(make_examples(), 24), pad_id=0)])
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert got["total"].item() == step_normaliser([collate(pad_rows(make_examples(), 24), pad_id=0)]).item()
        assert got["loss"].item() == pytest.approx(loss_8.item(), rel=1e-5)
        assert rel(got["grads"], grad_8) < 1e-5


def test_gradient_checkpointing_with_packed_attention_gives_the_same_loss_and_gradients():
    """Activation checkpointing (as ``gradient_checkpointing: true`` sets it up) recomputes each
    layer in the backward pass; over packed rows, with attention example by example inside them
    (``use_packed_attention``), the loss and the gradients equal those without it (fp32, 1e-6)."""
    from sftlab.demo.tiny import build_model
    from sftlab.model.attention import use_packed_attention

    torch.manual_seed(0)
    exs = make_examples(n=10, seed=3)
    batches = [collate(pack(exs, 24), pad_id=0)]
    assert batches[0]["input_ids"].shape[0] < len(exs)
    results = []
    for checkpointing in (False, True):
        m = build_model(vocab_size=VOCAB, hidden=64, layers=2)
        assert use_packed_attention(m)
        if checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        m.config.use_cache = False
        m.train()
        results.append(run_step(m, batches))
    (loss_plain, grad_plain), (loss_ckpt, grad_ckpt) = results
    assert loss_ckpt.item() == pytest.approx(loss_plain.item(), rel=1e-6)
    assert rel(grad_ckpt, grad_plain) < 1e-6


def _tiny(kind):
    from transformers import (BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel, OPTConfig,
                              OPTForCausalLM)

    from sftlab.model.attention import use_packed_attention

    torch.manual_seed(0)
    model = {"gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2)),
             "opt": lambda: OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                                     num_attention_heads=2, word_embed_proj_dim=32)),
             "bloom": lambda: BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2)),
             }[kind]()
    model.eval()  # dropout off, as training's check runs it
    use_packed_attention(model)
    return model


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_models_that_keep_to_the_packed_mask_pass_the_packing_check(model, kind):
    """Llama (rotary positions, sftlab's packed attention), GPT-2 (learned absolute positions, read
    from position_ids) and OPT (positions from the mask) give each packed example its own logits."""
    from sftlab.model.objective import check_packing

    m = model.eval() if kind == "llama" else _tiny(kind)
    check_packing(m, packed=True)
    check_packing(m, packed=False)


def test_a_model_whose_forward_fails_on_packed_batches_is_named():
    """Bloom builds ALiBi from a 2-D padding mask and fails on the 4-D mask: refused at the start,
    naming the architecture, instead of a traceback from inside the first step."""
    from sftlab.model.objective import check_packing

    with pytest.raises(ValueError, match=r"BloomForCausalLM \(bloom\): its forward fails on sftlab's batches, .*"
                                         r"ValueError: too many values to unpack"):
        check_packing(_tiny("bloom"))


def test_a_model_that_lets_packed_examples_see_each_other_is_refused(model):
    """A forward that drops the block-diagonal mask (one causal sequence over the whole row) lets
    the second example attend to the first: the check finds it in packed rows, and padded rows
    (one example each, padding after it) pass."""
    from sftlab.model.attention import ROW_LENGTHS
    from sftlab.model.objective import check_packing

    class Leaky(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
            kw.pop(ROW_LENGTHS, None)
            return self.inner(input_ids=input_ids, **kw)

    leaky = Leaky(model.eval())
    with pytest.raises(ValueError, match=r"an example's logits change when another example precedes it in a "
                                         r"packed row .*set packing\.mode: padded"):
        check_packing(leaky, packed=True)
    check_packing(leaky, packed=False)
