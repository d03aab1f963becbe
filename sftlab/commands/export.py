"""``sftlab export``: a run's trained model as a plain Hugging Face directory."""
from __future__ import annotations

from sftlab.model.export import export_run


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's model as a plain Hugging Face directory (LoRA merged with --merge)",
        description="Write RUN/final as a directory transformers, vLLM and llama.cpp's convert_hf_to_gguf.py "
                    "load: safetensors weights, config.json, the tokenizer with the training chat template "
                    "(in tokenizer_config.json and chat_template.jinja) and a generation_config.json whose "
                    "eos_token_id lists the end-of-turn token(s) training taught. With --merge a LoRA "
                    "adapter is merged into its base (peft merge_and_unload); without it the adapter is "
                    "copied with its base recorded as an absolute path or hub name. A checkpoint "
                    "(RUN/checkpoints/step-N) exports its model without its training state (optimizer, RNG, "
                    "checksums). "
                    "Exit 0: written; 2: unusable input.")
    p.add_argument("run", metavar="RUN", help="run directory (or a model directory such as RUN/final or RUN/checkpoints/step-N)")
    p.add_argument("out", metavar="OUT", help="new directory to write")
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base model")
    p.add_argument("--base", metavar="MODEL", default=None,
                   help="with --merge: the adapter's base model (default: the one the adapter and run.json record)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = export_run(args.run, args.out, merge=args.merge, base=args.base)
    print(f"wrote {out}")
    return 0
