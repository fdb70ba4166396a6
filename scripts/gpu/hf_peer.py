#!/usr/bin/env python3
"""The peer in the same GPU run (issue 21, section 7): transformers on a random Llama-3.1-8B.

Same shapes as Metrum's `synthetic:llama-3.1-8b` (hidden 4096, 32 layers, 32 q / 8 KV heads,
intermediate 14336, vocab 128256, bf16, untied head), random weights drawn on the GPU from a seed.
The weights are not Metrum's bits (copying 16 GB between the two programs would cost more device
time than the measurement); speed depends on shapes and dtype, not on the values.

Three measurements, each printed as one JSON line to stdout as soon as it is known, so a run cut
short by its time limit keeps the finished ones:

1. `static_eager`: batch 1, static KV cache, no compile: prompt P tokens, N new tokens.
2. `generate_batch`: transformers' continuous batching (`model.generate_batch`, paged attention,
   its own CUDA graphs) on R concurrent requests of P prompt tokens and N new tokens each.
3. `static_compiled`: batch 1, static cache, compiled by `generate` itself (transformers'
   automatic compilation of the decode forward for compilable caches on CUDA: CUDA graphs), the
   way transformers documents its fastest single-stream decode.

Decode tokens/s at batch 1 is (N - 1) / (time(N new) - time(1 new)): the prompt's prefill and
first token cancel out. For the batch, output tokens / wall time of the whole call, as a serving
benchmark would count it (prefill included), after one untimed call of the same size.

    hf_peer.py [--prompt 512] [--new 128] [--requests 64] [--only static_eager,...] > peer.jsonl
    hf_peer.py table peer.jsonl E2E_RUNS_DIR     # section 7's markdown, against Metrum's runs

The table compares like with like: the peer's batch-1 decode tokens/s with Metrum's `one-stream`
run (server-side TPOT, one request at a time over HTTP, so Metrum pays its HTTP and scheduling
overheads too), and the peer's `generate_batch` with Metrum's `64-at-once` run (output tokens over
the whole run's wall time, prefill included, as the client saw it).
"""
import argparse
import json
import sys
import time


def emit(**row):
    print(json.dumps(row), flush=True)


def build(seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.eval()
    torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    emit(what="model", params=params, seconds=round(time.perf_counter() - t0, 1),
         torch=torch.__version__, transformers=__import__("transformers").__version__,
         gpu=torch.cuda.get_device_name(0))
    return model


def timed_generate(model, ids, new, **kw):
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, do_sample=False,
                         eos_token_id=None, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new, out.shape
    return time.perf_counter() - t0


def batch1(model, label, prompt, new, compiled):
    import torch

    ids = torch.randint(1, 128000, (1, prompt), device="cuda")
    # With a static cache on CUDA, transformers' generate compiles the decode forward itself
    # (its CompileConfig: CUDA graphs); `disable_compile` is its switch for the eager row.
    kw = {"cache_implementation": "static", "disable_compile": not compiled}
    t0 = time.perf_counter()
    with torch.no_grad():
        # Warm-up: compile / capture for both lengths used below.
        timed_generate(model, ids, new, **kw)
        timed_generate(model, ids, 1, **kw)
        warm = time.perf_counter() - t0
        full = sorted(timed_generate(model, ids, new, **kw) for _ in range(3))[1]
        one = sorted(timed_generate(model, ids, 1, **kw) for _ in range(3))[1]
    tpot = (full - one) / (new - 1)
    emit(what=label, batch=1, prompt=prompt, new=new, warmup_s=round(warm, 1),
         tpot_ms=round(tpot * 1e3, 3), decode_tok_s=round(1 / tpot, 1),
         request_s=round(full, 3))


def continuous(model, prompt, new, requests):
    import torch
    from transformers import GenerationConfig

    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(1, 128000, (prompt,), generator=g).tolist() for _ in range(requests)]
    cfg = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)

    def once():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate_batch(inputs=inputs, generation_config=cfg, progress_bar=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    warm, _ = once()
    wall, out = once()
    tokens = sum(len(o.generated_tokens) for o in out.values())
    errors = sum(1 for o in out.values() if o.error)
    emit(what="generate_batch", requests=requests, prompt=prompt, new=new,
         warmup_s=round(warm, 1), wall_s=round(wall, 3), output_tokens=tokens, errors=errors,
         output_tok_s=round(tokens / wall, 1))


def table(peer_jsonl, e2e_dir):
    import os

    rows = {}
    for line in open(peer_jsonl):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["what"]] = r

    def summary(run):
        try:
            return json.load(open(os.path.join(e2e_dir, run, "summary.json")))
        except OSError:
            return None

    print("\n## 7. Peer in the same run: transformers on a random Llama-3.1-8B (same shapes, bf16)\n")
    m = rows.get("model", {})
    print(f"torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}, "
          f"{m.get('params', 0) / 1e9:.2f} B params on {m.get('gpu', '?')}. "
          "Prompt 512 tokens, 128 new tokens, greedy, no EOS. `scripts/gpu/hf_peer.py`.\n")
    print("| measure | transformers | Metrum | Metrum / transformers | target |")
    print("| --- | --- | --- | --- | --- |")
    one = summary("one-stream")
    metrum_tps = None
    if one and one["server"]["tpot_s"]["count"]:
        metrum_tps = 1.0 / one["server"]["tpot_s"]["mean"]
    for what, label in (("static_eager", "batch 1, static cache, eager"),
                        ("static_compiled", "batch 1, static cache, compiled (CUDA graphs)")):
        r = rows.get(what)
        peer = r.get("decode_tok_s") if r else None
        ratio = f"{metrum_tps / peer:.2f}x" if peer and metrum_tps else "-"
        shown = f"{peer:.1f} tok/s (TPOT {r['tpot_ms']:.2f} ms; warm-up {r['warmup_s']} s)" if peer else \
            (r or {}).get("error", "not run")
        metrum = f"{metrum_tps:.1f} tok/s (server TPOT, one stream)" if metrum_tps else "not run"
        print(f"| decode, {label} | {shown} | {metrum} | {ratio} | >= 1.0x (compiled) |")
    r = rows.get("generate_batch")
    many = summary("64-at-once")
    peer = r.get("output_tok_s") if r else None
    metrum = many["client"]["output_tokens_per_s"] if many else None
    ratio = f"{metrum / peer:.2f}x" if peer and metrum else "-"
    shown = (f"{peer:.0f} tok/s ({r['output_tokens']} tokens in {r['wall_s']} s, "
             f"{r['errors']} errors)") if peer else (r or {}).get("error", "not run")
    print(f"| 64 requests at once, output tok/s (prefill included) | {shown} | "
          f"{f'{metrum:.0f} tok/s' if metrum else 'not run'} | {ratio} | >= 2x |")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "table":
        return table(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="static_eager,generate_batch,static_compiled")
    args = ap.parse_args()
    model = build(args.seed)
    for what in args.only.split(","):
        try:
            if what == "static_eager":
                batch1(model, what, args.prompt, args.new, compiled=False)
            elif what == "static_compiled":
                batch1(model, what, args.prompt, args.new, compiled=True)
            elif what == "generate_batch":
                continuous(model, args.prompt, args.new, args.requests)
            else:
                raise ValueError(f"unknown measurement {what}")
        except Exception as e:  # one failed measurement must not hide the others
            emit(what=what, error=f"{type(e).__name__}: {e}"[:500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
