#!/usr/bin/env python3
"""llama.cpp in-process (llama-cpp-python), timed like engine/examples/bench_forward.rs: best-of-N
prefill of 128 and 512 tokens from an empty cache, then single-stream decode of N tokens after a
128-token context, one token per eval (greedy decode needs the logits of every step).

usage: bench_llamacpp_inprocess.py GGUF THREADS [--repeat N] [--decode N]
"""
import argparse
import time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("threads", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--decode", type=int, default=200)
    args = ap.parse_args()
    llm = Llama(model_path=args.gguf, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=1024, n_batch=512, n_ubatch=512, verbose=False)
    text = ("The capital of France is Paris. Paged attention stores keys and values in blocks. " * 80)
    prompt = llm.tokenize(text.encode(), add_bos=False)
    llm.reset()
    llm.eval(prompt[:16])  # warm-up
    for n in (128, 512):
        best = float("inf")
        for _ in range(args.repeat):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt[:n])
            best = min(best, time.perf_counter() - t0)
        print(f"prefill {n:>4} tokens: {best * 1e3:>8.1f} ms  ({n / best:.0f} tok/s, best of {args.repeat})")
    llm.reset()
    llm.eval(prompt[:128])
    t0 = time.perf_counter()
    for i in range(args.decode):
        llm.eval([prompt[(128 + i) % len(prompt)]])
    dt = (time.perf_counter() - t0) / args.decode
    print(f"decode (1 stream, context 128..{128 + args.decode}): {dt * 1e3:.2f} ms/token, {1 / dt:.1f} tok/s")


if __name__ == "__main__":
    main()
