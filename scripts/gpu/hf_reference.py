#!/usr/bin/env python3
"""Outside reference for Metrum's CUDA path (issue 8, check 3).

PyTorch + transformers build a random LlamaForCausalLM from a seed, save it as safetensors with a
byte-level tokenizer, and record their own logits and greedy tokens for fixed prompts. Metrum then
loads the same directory on CUDA (`metrum logits`) and `compare` checks the two agree.

    hf_reference.py make DIR --seed 0 [--dtype bfloat16]
    hf_reference.py compare DIR METRUM_JSON

Nothing here is Metrum code: it is the yardstick.
"""
import argparse
import json
import math
import os
import sys


def make(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=256 + 3,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=256,
        eos_token_id=257,
        tie_word_embeddings=False,
        torch_dtype=args.dtype,
    )
    model = LlamaForCausalLM(cfg)
    dtype = getattr(torch, args.dtype)
    model = model.to(dtype=dtype, device="cuda").eval()
    os.makedirs(args.dir, exist_ok=True)
    model.save_pretrained(args.dir, safe_serialization=True)
    write_byte_tokenizer(args.dir)

    prompts = [list(range(1, 30)), [65, 66, 67, 68, 69, 70, 71], list(range(100, 231))]
    out = {"prompts": prompts, "logits_last": [], "greedy": []}
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            logits = model(ids).logits[0, -1].float().cpu().tolist()
            out["logits_last"].append(logits)
            gen = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
            out["greedy"].append(gen[0, len(p):].cpu().tolist())
    with open(os.path.join(args.dir, "reference.json"), "w") as f:
        json.dump(out, f)
    print(f"wrote {args.dir} (transformers reference, {args.dtype})")


def write_byte_tokenizer(d):
    """A byte-level tokenizer.json whose ids 0..255 are the bytes, plus <s>, </s>, <pad>."""
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for c, i in (("<s>", 256), ("</s>", 257), ("<pad>", 258))
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "ByteFallback"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": True,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def rel_err(a, b):
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    den = math.sqrt(sum(y * y for y in b)) or 1.0
    return num / den


def compare(args):
    ref = json.load(open(os.path.join(args.dir, "reference.json")))
    got = json.load(open(args.metrum_json))
    rows = []
    ok = True
    for i, p in enumerate(ref["prompts"]):
        err = rel_err(got["logits_last"][i], ref["logits_last"][i])
        same = got["greedy"][i] == ref["greedy"][i]
        agree = sum(int(a == b) for a, b in zip(got["greedy"][i], ref["greedy"][i]))
        passed = err < 2e-2 and agree >= len(ref["greedy"][i]) - 2
        ok &= passed
        rows.append((len(p), err, agree, len(ref["greedy"][i]), same, passed))
    print("| prompt tokens | logits rel. err vs transformers | greedy tokens agreeing | pass |")
    print("| --- | --- | --- | --- |")
    for n, err, agree, total, same, passed in rows:
        print(f"| {n} | {err:.2e} | {agree}/{total}{' (identical)' if same else ''} | {'yes' if passed else 'NO'} |")
    sys.exit(0 if ok else 1)


def devices(args):
    """Same weights, two devices: each METRUM_JSON against the first (the CPU f32 run)."""
    base = json.load(open(args.files[0]))
    print("| run | logits rel. err vs CPU f32 (worst prompt) | greedy tokens agreeing | pass |")
    print("| --- | --- | --- | --- |")
    ok = True
    for label, path in zip(args.labels[1:], args.files[1:]):
        got = json.load(open(path))
        errs = [rel_err(g, b) for g, b in zip(got["logits_last"], base["logits_last"])]
        agree = sum(sum(int(a == b) for a, b in zip(g, r)) for g, r in zip(got["greedy"], base["greedy"]))
        total = sum(len(r) for r in base["greedy"])
        tol = 1e-4 if "f32" in label else 3e-2
        passed = max(errs) < tol and agree >= total - 2 * len(base["greedy"])
        ok &= passed
        print(f"| {label} | {max(errs):.2e} | {agree}/{total} | {'yes' if passed else 'NO'} |")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dtype", default="bfloat16")
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("metrum_json")
    d = sub.add_parser("devices")
    d.add_argument("--labels", nargs="+", required=True)
    d.add_argument("files", nargs="+")
    args = ap.parse_args()
    {"make": make, "compare": compare, "devices": devices}[args.cmd](args)


if __name__ == "__main__":
    main()
