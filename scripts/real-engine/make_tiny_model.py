#!/usr/bin/env python3
"""Write the model directory that the real engine (vLLM, CPU) serves as `tiny-llama`.

The weights are random (fixed seed, so every build is identical); the tokenizer is
the project's TinyLlama fixture plus four added tokens (see ADDED_TOKENS), so vLLM
counts tokens exactly like the gateway's `tokenizers`-crate code loading
fixtures/tokenizers/tinyllama.json for every text that does not contain one of
those four strings (checked below on a list of prompts). Nothing is downloaded.

The added tokens are what vLLM's parsers need: `--reasoning-parser deepseek_r1`
refuses to start unless `<think>` and `</think>` are single tokens, and with
`<tool_call>` / `</tool_call>` as tokens a request can force a hermes tool call
with `logit_bias`. They are non-special (like DeepSeek-R1's and Qwen3's), so they
survive `skip_special_tokens` in the detokenised text the parsers read. Their
lm_head rows are zero: their logit is exactly 0 (+ any logit_bias), while the
best ordinary token's is positive (checked on the texts below), so greedy outputs
do not pick them by themselves; every other weight is the same as with the
32000-token vocabulary (the embedding gets 4 rows, lm_head 4 zero rows).

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
# The fixture tokenizer's vocabulary; the model's vocab_size is this plus the
# added tokens.
BASE_VOCAB = 32000

# Added to tokenizer.json's "added_tokens" with the ids 32000.. in this order.
ADDED_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")

SHAPE = dict(
    vocab_size=BASE_VOCAB + len(ADDED_TOKENS),
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)

# fixtures/tokenizers/<source>  ->  <model dir>/<target>: tokenizer.json is the
# fixture plus ADDED_TOKENS; the other two are byte copies.
TOKENIZER_SOURCE = ("tinyllama.json", "tokenizer.json")
TOKENIZER_COPIES = (
    ("tinyllama.tokenizer_config.json", "tokenizer_config.json"),
    ("tinyllama.chat_template.jinja", "chat_template.jinja"),
)

# Texts whose token ids must be the same with the fixture tokenizer and with the
# model's (added tokens) one, with and without BOS: ordinary prompts, rendered
# chat prompts, and near misses of the added strings.
SAME_IDS_TEXTS = (
    "Hello world",
    "Say hello.",
    "  leading spaces, ünïcödé and 数字 42\nnew line",
    "<|system|>\nYou are terse.</s>\n<|user|>\nHello there</s>\n<|assistant|>\n",
    "<|user|>\nWhat is the weather in Paris? Use the tool.</s>\n<|assistant|>\n",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "think about it: <thin k> </ think> <think < tool_call> tool_call </tool_call",
    "<Think></THINK><tool-call></tool_call >",
    "emoji 🙂 tabs\tand\r\nCRLF, trailing space ",
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
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_src = fixtures / TOKENIZER_SOURCE[0]
    sources = {src: fixtures / src for src, _ in TOKENIZER_COPIES}
    for path in [tokenizer_src, *sources.values()]:
        if not path.is_file():
            fail(f"missing tokenizer fixture {path}")
    fixture_json = json.loads(tokenizer_src.read_text(encoding="utf-8"))
    vocab = fixture_json["model"]["vocab"]
    if len(vocab) != BASE_VOCAB:
        fail(f"{tokenizer_src} has {len(vocab)} tokens, expected {BASE_VOCAB}")
    clashes = [t for t in ADDED_TOKENS if t in vocab] + [
        a["content"] for a in fixture_json["added_tokens"] if a["content"] in ADDED_TOKENS or a["id"] >= BASE_VOCAB
    ]
    if clashes:
        fail(f"{tokenizer_src} already has {clashes}")

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # The random model is made at the fixture's vocabulary size (so every weight
    # is what the seed gave before tokens were added), then the embedding gets
    # one row per added token (from a second generator) and lm_head one zero row.
    config = LlamaConfig(
        **dict(SHAPE, vocab_size=BASE_VOCAB),
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
    hidden, n_added = SHAPE["hidden_size"], len(ADDED_TOKENS)
    with torch.no_grad():
        extra = torch.Generator().manual_seed(seed + 1)
        rows = torch.randn(n_added, hidden, generator=extra) * config.initializer_range
        embed = torch.nn.Embedding(SHAPE["vocab_size"], hidden, dtype=torch.bfloat16)
        embed.weight.copy_(torch.cat([model.get_input_embeddings().weight, rows.to(torch.bfloat16)]))
        head = torch.nn.Linear(hidden, SHAPE["vocab_size"], bias=False, dtype=torch.bfloat16)
        head.weight.copy_(torch.cat([model.get_output_embeddings().weight,
                                     torch.zeros(n_added, hidden, dtype=torch.bfloat16)]))
    model.set_input_embeddings(embed)
    model.set_output_embeddings(head)
    model.config.vocab_size = SHAPE["vocab_size"]
    model.vocab_size = SHAPE["vocab_size"]
    model.eval()
    n_params = sum(t.numel() for t in model.parameters())
    model.save_pretrained(str(work), safe_serialization=True)
    saved = json.loads((work / "config.json").read_text(encoding="utf-8"))
    if saved.get("vocab_size") != SHAPE["vocab_size"]:
        fail(f"config.json has vocab_size {saved.get('vocab_size')}, expected {SHAPE['vocab_size']}")

    # tokenizer.json: the fixture plus the added tokens, nothing else changed.
    model_json = json.loads(json.dumps(fixture_json))
    for i, content in enumerate(ADDED_TOKENS):
        model_json["added_tokens"].append(dict(
            id=BASE_VOCAB + i, content=content, single_word=False, lstrip=False, rstrip=False,
            normalized=False, special=False,
        ))
    tokenizer_dst = work / TOKENIZER_SOURCE[1]
    tokenizer_dst.write_text(json.dumps(model_json, ensure_ascii=False, indent=2), encoding="utf-8")
    reread = json.loads(tokenizer_dst.read_text(encoding="utf-8"))
    if {k: v for k, v in reread.items() if k != "added_tokens"} != {k: v for k, v in fixture_json.items() if k != "added_tokens"} \
            or reread["added_tokens"][: len(fixture_json["added_tokens"])] != fixture_json["added_tokens"]:
        fail(f"{tokenizer_dst} differs from {tokenizer_src} in more than the added tokens")

    # The other tokenizer files: plain byte copies, then proven identical by hash.
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
    for i, content in enumerate(ADDED_TOKENS):
        got_ids = tok(f"a{content}b", add_special_tokens=False)["input_ids"]
        if BASE_VOCAB + i not in got_ids:
            fail(f"{content!r} is not token {BASE_VOCAB + i} in 'a{content}b': {got_ids}")
        if tok.decode([BASE_VOCAB + i], skip_special_tokens=True) != content:
            fail(f"token {BASE_VOCAB + i} does not decode to {content!r} with skip_special_tokens")

    # Ordinary texts: the same ids as the gateway's fixture tokenizer, both with
    # the tokenizers library (what vLLM wraps) and with transformers.
    fixture_tok, model_tok = Tokenizer.from_file(str(tokenizer_src)), Tokenizer.from_file(str(tokenizer_dst))
    for text in SAME_IDS_TEXTS:
        for special in (True, False):
            want = fixture_tok.encode(text, add_special_tokens=special).ids
            got = (model_tok.encode(text, add_special_tokens=special).ids,
                   tok(text, add_special_tokens=special)["input_ids"])
            if got != (want, want):
                fail(f"{text!r} (add_special_tokens={special}): fixture {want}, model dir {got}")

    # Zero lm_head rows: the added tokens' logit (0) is below the best ordinary
    # token's at every position, so greedy decoding never picks them by itself.
    with torch.no_grad():
        for text in SAME_IDS_TEXTS:
            logits = model(torch.tensor([fixture_tok.encode(text).ids])).logits[0].float()
            if not torch.all(logits[:, BASE_VOCAB:] == 0) or not torch.all(logits[:, :BASE_VOCAB].max(dim=-1).values > 0):
                fail(f"an added token could win a greedy step on {text!r}")

    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)

    print(f"make_tiny_model: {out}: LlamaForCausalLM, {n_params:,} params, vocab {SHAPE['vocab_size']}"
          f" ({BASE_VOCAB} + {len(ADDED_TOKENS)} added: {' '.join(ADDED_TOKENS)}), seed {seed}, bf16")
    for entry in sorted(out.iterdir()):
        if entry.is_file():
            print(f"  {entry.name:24s} {entry.stat().st_size:>10,d} B  sha256 {file_sha256(entry)}")
    for dst, digest in hashes.items():
        print(f"  verified byte-identical copy: {dst} sha256 {digest}")
    print(f"  verified: {TOKENIZER_SOURCE[1]} = {TOKENIZER_SOURCE[0]} + added tokens; {len(SAME_IDS_TEXTS)} texts"
          " encode to the same ids with both (with and without BOS)")


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
