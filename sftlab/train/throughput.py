"""Throughput of training: model FLOPs per step from the model's shape, the device's peak, and
their ratio, the model FLOP utilisation (MFU).

FLOPs follow PaLM's MFU accounting (Chowdhery et al. 2022, appendix B): a token costs ``6 N``
(forward 2N, backward 4N) for the N weights of the model's matrix multiplications (every linear
layer, the output head included, the embedding lookup not), plus ``12 L d T`` for attention over a
context of T tokens in L layers of width d. In a packed row a token attends within its own example,
so T is the example's length and the attention term of a step is ``12 L d sum_i len_i^2``. Weights
that are not trained (LoRA's frozen base) skip their weight gradient: 4 FLOPs per weight and
token instead of 6. The output head is counted at the positions whose logits the objective needs,
the trained targets, not at every token: response-only training needs no logits elsewhere, and
sftlab computes none there (a trainer that does computes more than the model needs, which MFU
does not credit). Counting the head at every position put a LoRA run's MFU on the CPU above 100 %
(SmolLM2-135M: the head is 28M of its 135M matmul weights). Recomputation by gradient
checkpointing is not counted (that would be hardware FLOP utilisation), so MFU compares runs with
and without it fairly.

The peak is the datasheet's dense bf16 tensor throughput for a known GPU (:data:`GPU_PEAK_TFLOPS`),
else the measured throughput of matrix products from the model's hidden size into its layers' widths
(the fastest of them) in the training dtype, timed once per run (the CPU's case).

    >>> step_flops(matmul_weights=1000, frozen_weights=0, layers=2, hidden=8, tokens=10, square_lengths=50)
    69600
    >>> step_flops(matmul_weights=1000, frozen_weights=0, layers=2, hidden=8, tokens=10, square_lengths=50,
    ...            head_weights=400, head_tokens=4)  # the head at the 4 trained targets only
    55200
    >>> gpu_peak("NVIDIA H100 80GB HBM3")
    (989.4, 'datasheet: H100 SXM bf16 dense')
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

GPU_PEAK_TFLOPS = (  # (name fragment, dense bf16 TFLOP/s, label), most specific first
    ("H100 PCIe", 756.0, "H100 PCIe"), ("H100 NVL", 835.0, "H100 NVL"), ("H100", 989.4, "H100 SXM"),
    ("H200", 989.4, "H200"), ("GH200", 989.4, "GH200"), ("B200", 2250.0, "B200"),
    ("A100", 312.0, "A100"), ("L40S", 362.0, "L40S"), ("L4", 121.0, "L4"), ("A10G", 70.0, "A10G"),
    ("A10", 125.0, "A10"), ("RTX 4090", 165.2, "RTX 4090"), ("RTX A6000", 154.8, "RTX A6000"),
)
"""NVIDIA datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s."""


def gpu_peak(name: str) -> tuple[float, str] | None:
    """``(TFLOP/s, source)`` for a GPU ``name`` in the table, else None."""
    for fragment, tflops, label in GPU_PEAK_TFLOPS:
        if fragment in name:
            return tflops, f"datasheet: {label} bf16 dense"
    return None


def measured_peak(hidden: int, dtype=torch.float32, device="cpu", seconds: float = 0.3,
                  widths: tuple[int, ...] = (), rows: tuple[int, ...] = (2048,), rounds: int = 2) -> float:
    """FLOP/s of ``[m, hidden] @ [hidden, w]`` products on ``device`` for ``m`` in ``rows`` and
    ``w`` = ``hidden`` and each of ``widths`` (the model's layer widths), the fastest of them. Each shape is warmed up once, then timed
    ``rounds`` times for its share of ``seconds`` (at least 2 products a round), its best round
    kept: a CPU shared with other work, or still raising its clock, reads slow in a single round,
    and a peak read low puts MFU above 1. So would timing only the square product: a model's wide
    products (the MLP, the output head) run nearer the machine's limit."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    shapes = [(m, w) for w in sorted({hidden, *widths}) for m in rows]
    pairs = {}
    for m, width in shapes:
        pairs[m, width] = (torch.randn(m, hidden, dtype=dtype, device=device),
                           torch.randn(hidden, width, dtype=dtype, device=device))
        torch.mm(*pairs[m, width])
    sync()
    best = 0.0
    for _ in range(rounds):
        for (m, width), (a, b) in pairs.items():
            n, start = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - start < seconds / len(shapes) / rounds:
                torch.mm(a, b)
                n += 1
            sync()
            best = max(best, 2.0 * m * hidden * width * n / (time.perf_counter() - start))
    return best


def step_flops(*, matmul_weights: int, frozen_weights: int, layers: int, hidden: int, tokens: int,
               square_lengths: int, head_weights: int = 0, head_frozen: bool = False,
               head_tokens: int | None = None) -> int:
    """Model FLOPs of one training step over ``tokens`` tokens whose examples' squared lengths sum
    to ``square_lengths``; ``frozen_weights`` of the ``matmul_weights`` get no weight gradient.
    ``head_weights`` of them (frozen or not: ``head_frozen``) are the output head's, counted at
    ``head_tokens`` positions (the trained targets) instead of every token."""
    body, body_frozen = matmul_weights - head_weights, frozen_weights - (head_weights if head_frozen else 0)
    head_tokens = tokens if head_tokens is None else head_tokens
    return ((6 * (body - body_frozen) + 4 * body_frozen) * tokens + (4 if head_frozen else 6) * head_weights * head_tokens
            + 12 * layers * hidden * square_lengths)


MAX_REMEASURES = 3
"""Most times a run times its measured peak again after a step beat it; past that an MFU above 1
is reported as it is (the FLOP count or the peak is wrong, and hiding it would not say which)."""


class Throughput:
    """The model's shape and the device's peak, read once; :meth:`mfu` per step.

    ``peak`` is FLOP/s of one process; ``describe()`` is the manifest's ``throughput`` section.
    """

    def __init__(self, model, device, dtype=torch.float32):
        config = getattr(model, "config", None)
        self.layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        self.hidden = int(getattr(config, "hidden_size", 0) or 0)
        # every linear layer's weight once (a head tied to the embeddings is a real product)
        linear = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}.values())
        self.matmul_weights = sum(w.numel() for w in linear)
        self.frozen_weights = sum(w.numel() for w in linear if not w.requires_grad)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head = getattr(head, "weight", None)
        self.head_weights = int(head.numel()) if head is not None and any(head is w for w in linear) else 0
        self.head_frozen = bool(self.head_weights) and not head.requires_grad
        # the widths the model multiplies into, the head's capped (a timing, not a model)
        self.widths = tuple(sorted({min(int(w.shape[0]), 4096) for w in linear if w.dim() == 2}))
        self.peak, self.peak_source, measured = self._peak(device, dtype)
        self.remeasured = 0
        """Times the measured peak was timed again because a step ran faster than it (see ``mfu``)."""
        self._measure = (lambda: self._peak(device, dtype)[0]) if measured else None

    def _peak(self, device, dtype) -> tuple[float | None, str, bool]:
        """``(FLOP/s, source, whether it was timed)``: a known GPU's datasheet peak, else timed."""
        if str(device).startswith("cuda"):
            name = torch.cuda.get_device_name(device)
            known = gpu_peak(name)
            if known:
                return known[0] * 1e12, f"{name}: {known[1]}", False
            if self.hidden:
                return measured_peak(self.hidden, torch.bfloat16, device, widths=self.widths), \
                    f"{name}: measured bf16 matmul at hidden size {self.hidden}, the model's widths", True
        if not self.hidden:
            return None, "unknown: the model config names no hidden_size", False
        return measured_peak(self.hidden, dtype, "cpu", widths=self.widths), \
            f"CPU: measured {str(dtype).removeprefix('torch.')} matmul at hidden size {self.hidden} into the " \
            f"model's widths (fastest of {len(set((self.hidden, *self.widths)))}) " \
            f"({torch.get_num_threads()} threads)", True

    def flops(self, tokens: int, square_lengths: int, trained: int | None = None) -> int:
        """Model FLOPs of a step; the head at ``trained`` targets (every token when None)."""
        return step_flops(matmul_weights=self.matmul_weights, frozen_weights=self.frozen_weights,
                          layers=self.layers, hidden=self.hidden, tokens=tokens, square_lengths=square_lengths,
                          head_weights=self.head_weights, head_frozen=self.head_frozen, head_tokens=trained)

    def mfu(self, tokens: int, square_lengths: int, seconds: float, processes: int = 1,
            trained: int | None = None) -> float | None:
        """Share of the peak of ``processes`` devices that a step of ``tokens`` (``trained`` of
        them targets) in ``seconds`` used."""
        if not self.peak or seconds <= 0:
            return None
        rate = self.flops(tokens, square_lengths, trained) / seconds / processes
        if rate > self.peak and self._measure is not None and self.remeasured < MAX_REMEASURES:
            # A measured peak that a step beats was read low (a CPU shared with other work, or
            # still raising its clock, when it was timed): time it again and keep the higher.
            self.remeasured += 1
            self.peak = max(self.peak, self._measure())
        return rate / self.peak

    def describe(self) -> dict:
        return {"peak_flops_per_s": self.peak, "peak_source": self.peak_source,
                "matmul_weights": self.matmul_weights, "frozen_weights": self.frozen_weights,
                "head_weights": self.head_weights, "head_frozen": self.head_frozen,
                "peak_remeasured": self.remeasured, "layers": self.layers, "hidden_size": self.hidden,
                "flops": "(6 x trained + 4 x frozen matmul weights) x tokens, the output head's at the trained "
                         "targets only, + 12 x layers x hidden x sum of squared example lengths (PaLM appendix B; "
                         "recomputation not counted)"}


class PhaseTimes:
    """Wall-clock seconds per phase of a run (load, prepare, train, eval, save); a phase opened
    inside another is not counted twice (``train`` excludes the validation and saving inside it).

        >>> t = PhaseTimes()
        >>> with t("train"):
        ...     with t("eval"):
        ...         pass
        >>> sorted(t.seconds)
        ['eval', 'train']
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # [name, start, seconds spent in phases opened inside]

    def start(self, name: str) -> None:
        self._open.append([name, time.perf_counter(), 0.0])

    def stop(self, name: str) -> None:
        opened, start, inner = self._open.pop()
        assert opened == name, (opened, name)
        total = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + total - inner
        if self._open:
            self._open[-1][2] += total

    def __call__(self, name: str):
        @contextmanager
        def phase():
            self.start(name)
            try:
                yield
            finally:
                self.stop(name)
        return phase()

    def describe(self, manifest: dict | None = None, resumed: bool = False) -> dict:
        """The manifest's ``timing`` section: seconds per phase over every invocation of the run
        (a resumed run adds to what ``manifest`` holds) and of this invocation."""
        now = {k: round(v, 3) for k, v in self.seconds.items()}
        before = ((manifest or {}).get("timing") or {}).get("phases_s") or {} if resumed else {}
        total = {k: round(before.get(k, 0.0) + now.get(k, 0.0), 3) for k in dict.fromkeys([*before, *now])}
        return {"phases_s": total, "this_invocation_s": now,
                "note": "wall-clock seconds; train excludes the validation (eval) and checkpoints (save) inside it"}
