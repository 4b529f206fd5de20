#!/usr/bin/env python3
"""Write the model directory that the real engine (vLLM, CPU) serves as `tiny-llama`.

The weights are random (fixed seed, so every build is identical); the tokenizer is
the project's TinyLlama fixture, copied byte for byte, so vLLM counts tokens exactly
like the gateway's `tokenizers`-crate code loading fixtures/tokenizers/tinyllama.json.
Nothing is downloaded.

    <engine venv>/bin/python make_tiny_model.py --out DIR [--fixtures DIR] [--seed 1234]

Needs torch, transformers and safetensors (all in the engine venv built by setup.sh).
The directory is built in DIR.partial and renamed to DIR only when complete.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

# Shape of the model. head_dim = hidden / heads = 32: vLLM's CPU attention
# backend rejects head sizes below 32.
SHAPE = dict(
    vocab_size=32000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)

# fixtures/tokenizers/<source>  ->  <model dir>/<target>
TOKENIZER_COPIES = (
    ("tinyllama.json", "tokenizer.json"),
    ("tinyllama.tokenizer_config.json", "tokenizer_config.json"),
    ("tinyllama.chat_template.jinja", "chat_template.jinja"),
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fail(msg: str) -> "None":
    print(f"make_tiny_model: error: {msg}", file=sys.stderr)
    sys.exit(1)


def build(out: Path, fixtures: Path, seed: int) -> None:
    # Offline before transformers is imported: it must never look for a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    sources = {src: fixtures / src for src, _ in TOKENIZER_COPIES}
    for path in sources.values():
        if not path.is_file():
            fail(f"missing tokenizer fixture {path}")
    vocab = json.loads(sources["tinyllama.json"].read_text(encoding="utf-8"))["model"]["vocab"]
    if len(vocab) != SHAPE["vocab_size"]:
        fail(f"{sources['tinyllama.json']} has {len(vocab)} tokens, expected {SHAPE['vocab_size']}")

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    config = LlamaConfig(
        **SHAPE,
        head_dim=SHAPE["hidden_size"] // SHAPE["num_attention_heads"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype=torch.bfloat16).eval()
    n_params = sum(t.numel() for t in model.parameters())
    model.save_pretrained(str(work), safe_serialization=True)

    # Tokenizer files: plain byte copies, then proven identical by hash.
    hashes = {}
    for src, dst in TOKENIZER_COPIES:
        shutil.copyfile(sources[src], work / dst)
        want, got = file_sha256(sources[src]), file_sha256(work / dst)
        if want != got:
            fail(f"{dst} is not a byte-identical copy of {src} ({got} != {want})")
        hashes[dst] = got

    # transformers must load the tokenizer and find the chat template on its own.
    tok = AutoTokenizer.from_pretrained(str(work))
    if len(tok) != SHAPE["vocab_size"]:
        fail(f"transformers sees {len(tok)} tokens, expected {SHAPE['vocab_size']}")
    if not getattr(tok, "chat_template", None):
        fail("transformers did not pick up chat_template.jinja")
    ids = tok("Hello world")["input_ids"]
    if ids[:1] != [1] or len(ids) != 3:
        fail(f"'Hello world' encodes to {ids}, expected BOS (1) + 2 tokens")

    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)

    print(f"make_tiny_model: {out}: LlamaForCausalLM, {n_params:,} params, seed {seed}, bf16")
    for entry in sorted(out.iterdir()):
        if entry.is_file():
            print(f"  {entry.name:24s} {entry.stat().st_size:>10,d} B  sha256 {file_sha256(entry)}")
    for dst, digest in hashes.items():
        print(f"  verified byte-identical copy: {dst} sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="model directory to (re)create")
    parser.add_argument("--fixtures", type=Path, default=REPO_ROOT / "fixtures" / "tokenizers",
                        help="folder holding tinyllama.json etc. (default: the repository's)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    build(args.out.resolve(), args.fixtures.resolve(), args.seed)


if __name__ == "__main__":
    main()
