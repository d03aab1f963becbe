"""``sftlab convert``: a GGUF file as a plain Hugging Face model directory."""
from __future__ import annotations

from sftlab.errors import UsageError
from sftlab.model.export import convert_to_directory


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="write a GGUF model as a plain Hugging Face directory",
        description="Dequantise a GGUF file (llama.cpp's format) to float32 and write a Hugging Face "
                    "directory: config.json, model.safetensors, the tokenizer with its chat template, "
                    "generation_config.json and sftlab_source.json (where the weights came from). "
                    "The conversion is the one training and every command use for a .gguf, cached "
                    "once under the model cache. Exit 0: written; 2: unusable input.")
    p.add_argument("gguf", metavar="GGUF", help="a .gguf file, or a directory holding exactly one")
    p.add_argument("out", metavar="OUT", help="new directory to write")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        out = convert_to_directory(args.gguf, args.out)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{args.gguf}: {' '.join(str(e).split())[:400]}") from None
    print(f"wrote {out}")
    return 0
