#!/usr/bin/env python3
"""Build the tiny model-family fixtures under engine/tests/fixtures/families/.

For each family (qwen2, qwen3, mistral, gemma2, gemma3, phi3, phi4mini) this script
  1. builds a small byte-level BPE tokenizer (256 byte tokens, a handful of merges, the
     family's special tokens) with the `tokenizers` package, plus tokenizer_config.json
     carrying the family's real chat template (from llama.cpp's models/templates, see README);
  2. builds a tiny random model with HF transformers from a fixed seed and saves it with
     `save_pretrained` (config.json, generation_config.json, model.safetensors, f32);
  3. reloads it with transformers (f32, eager attention) and writes reference outputs:
     reference.json (prompts, greedy continuations, margins, feature checks, chat renders)
     and reference.safetensors (the full logits of every position of every prompt, and the
     logits of every greedy step);
  4. converts it to model.gguf (f32) by running llama.cpp's own convert_hf_to_gguf.py
     (from the llama-cpp-python sdist) in a subprocess, with the few documented patches
     listed in PATCHES below;
  5. verifies: GGUF tensors mapped back to HF names reproduce the reference logits, the
     GGUF vocab equals the tokenizer's, and transformers' tokenizer agrees with tokenizer.json.

Run by hand (not in CI):   python3 scripts/make_family_fixtures.py
Options:  --only qwen2,gemma2   --llama-cpp DIR (a llama.cpp tree with convert_hf_to_gguf.py)
          --no-gguf   --out DIR
Requirements: scripts/requirements-fixtures.txt. Without --llama-cpp the script fetches the
pinned llama-cpp-python sdist with `pip download` (a PyPI package) into ~/.cache and uses the
llama.cpp tree vendored in it.

Deterministic: rerunning with the pinned versions rewrites byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "engine" / "tests" / "fixtures" / "families"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist whose vendor/llama.cpp we run

BASE_SEED = 20261204
N_GREEDY = 12

# ---------------------------------------------------------------------------------------------
# Chat templates. Qwen2.5, Qwen3, Gemma 2, Mistral (Nemo) and Phi-3.5 come verbatim from
# llama.cpp's models/templates/ (read from the llama.cpp tree at run time). llama.cpp has no
# Gemma 3 template; GEMMA3_TEMPLATE below is Google's gemma-3-*-it template (tokenizer_config
# "chat_template"), transcribed from a llama.cpp debugging dump of a gemma-3 GGUF's
# tokenizer.chat_template. The templates are the model vendors' (see README for licenses).
# ---------------------------------------------------------------------------------------------
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# BPE merges shared by every fixture tokenizer (byte-level symbols; 'Ġ' is the space byte).
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"),
    ("o", "n"), ("Ġ", "a"), ("r", "e"), ("Ġ", "c"), ("i", "s"), ("Ġ", "o"),
]

QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Shapes common to every family (issue 14's brief); per-family overrides below.
COMMON = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)

# token lists: `lead` tokens take the first ids (before the 256 byte tokens), `trail` tokens
# come after the bytes and merges. (special?, token) pairs; special=False marks tokens that real
# checkpoints register as added-but-not-special (Qwen's <think>, <tool_call>, ...).
FAMILIES: dict[str, dict] = {
    "qwen2": dict(
        arch="Qwen2ForCausalLM",
        template_file="Qwen-Qwen2.5-7B-Instruct.jinja",
        lead=[],
        trail=[(True, "<|endoftext|>"), (True, "<|im_start|>"), (True, "<|im_end|>"),
               (False, "<tool_call>"), (False, "</tool_call>"), (False, "<think>"), (False, "</think>")],
        pre="qwen",
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None,
        config_bos="<|endoftext|>",
        gen_eos=["<|im_end|>", "<|endoftext|>"],
        add_bos=False,
        tokenizer_class="Qwen2Tokenizer",
        config=dict(tie_word_embeddings=True, use_sliding_window=False,
                    rope_theta=10000.0),
        embed_std=0.4,
        chat_system=True,
    ),
    "qwen3": dict(
        arch="Qwen3ForCausalLM",
        template_file="Qwen-Qwen3-0.6B.jinja",
        lead=[],
        trail=[(True, "<|endoftext|>"), (True, "<|im_start|>"), (True, "<|im_end|>"),
               (False, "<tool_call>"), (False, "</tool_call>"), (False, "<tool_response>"),
               (False, "</tool_response>"), (False, "<think>"), (False, "</think>")],
        pre="qwen",
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None,
        config_bos="<|endoftext|>",
        gen_eos=["<|im_end|>", "<|endoftext|>"],
        add_bos=False,
        tokenizer_class="Qwen2Tokenizer",
        config=dict(head_dim=32, attention_bias=False, tie_word_embeddings=False,
                    use_sliding_window=False, rope_theta=10000.0),
        embed_std=1.0,
        chat_system=True,
    ),
    "mistral": dict(
        arch="MistralForCausalLM",
        template_file="mistralai-Mistral-Nemo-Instruct-2407.jinja",
        lead=[(True, "<unk>"), (True, "<s>"), (True, "</s>"), (True, "[INST]"), (True, "[/INST]"),
              (True, "[TOOL_CALLS]"), (True, "[AVAILABLE_TOOLS]"), (True, "[/AVAILABLE_TOOLS]"),
              (True, "[TOOL_RESULTS]"), (True, "[/TOOL_RESULTS]")],
        trail=[],
        pre="gpt2",
        bos="<s>", eos="</s>", pad=None, unk="<unk>",
        config_bos="<s>",
        gen_eos=["</s>"],
        add_bos=True,
        tokenizer_class="PreTrainedTokenizerFast",
        config=dict(head_dim=16, sliding_window=8, tie_word_embeddings=False, rope_theta=10000.0),
        embed_std=1.0,
        chat_system=True,
    ),
    "gemma2": dict(
        arch="Gemma2ForCausalLM",
        template_file="google-gemma-2-2b-it.jinja",
        lead=[(True, "<pad>"), (True, "<eos>"), (True, "<bos>"), (True, "<unk>")],
        trail=[(True, "<start_of_turn>"), (True, "<end_of_turn>")],
        pre="gpt2",
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
        config_bos="<bos>",
        gen_eos=["<eos>", "<end_of_turn>"],
        add_bos=True,
        tokenizer_class="PreTrainedTokenizerFast",
        config=dict(head_dim=32, query_pre_attn_scalar=24, sliding_window=8,
                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                    rope_theta=10000.0),
        gemma=True,
        embed_std=0.15,
        # Make both soft-caps bite: a large final norm scale (1 + w ~ 8: uncapped logits up to
        # ~50) and large q/k projections (attention scores of tens). reference.json
        # "feature_checks" records how much the logits move with each cap switched off.
        final_norm_offset=7.0,
        qk_gain=4.0,
        chat_system=False,  # Gemma 2's template raises on a system message
    ),
    "gemma3": dict(
        arch="Gemma3ForCausalLM",
        template_text=GEMMA3_TEMPLATE,
        lead=[(True, "<pad>"), (True, "<eos>"), (True, "<bos>"), (True, "<unk>")],
        trail=[(True, "<start_of_turn>"), (True, "<end_of_turn>")],
        pre="gpt2",
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
        config_bos="<bos>",
        gen_eos=["<eos>", "<end_of_turn>"],
        add_bos=True,
        tokenizer_class="PreTrainedTokenizerFast",
        config=dict(head_dim=32, query_pre_attn_scalar=24, sliding_window=8,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    rope_theta=1000000.0, rope_local_base_freq=10000.0,
                    final_logit_softcapping=None, attn_logit_softcapping=None,
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
        gemma=True,
        embed_std=0.2,
        final_norm_offset=3.0,
        no_vocab_padding=True,
        chat_system=True,  # Gemma 3 folds the system message into the first user turn
    ),
    "phi3": dict(
        arch="Phi3ForCausalLM",
        template_file="microsoft-Phi-3.5-mini-instruct.jinja",
        lead=[],
        trail=[(True, "<|endoftext|>"), (True, "<|system|>"), (True, "<|user|>"),
               (True, "<|assistant|>"), (True, "<|end|>")],
        pre="gpt2",
        bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>", unk=None,
        config_bos="<|endoftext|>",
        gen_eos=["<|end|>", "<|endoftext|>"],
        add_bos=False,
        tokenizer_class="GPT2Tokenizer",
        config=dict(tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None,
                    original_max_position_embeddings=512),
        embed_std=1.0,
        chat_system=True,
    ),
    "phi4mini": dict(
        arch="Phi3ForCausalLM",
        template_file="microsoft-Phi-3.5-mini-instruct.jinja",
        lead=[],
        trail=[(True, "<|endoftext|>"), (True, "<|system|>"), (True, "<|user|>"),
               (True, "<|assistant|>"), (True, "<|end|>")],
        pre="gpt2",
        bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>", unk=None,
        config_bos="<|endoftext|>",
        gen_eos=["<|end|>", "<|endoftext|>"],
        add_bos=False,
        tokenizer_class="GPT2Tokenizer",
        config=dict(
            tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None,
            partial_rotary_factor=0.75,
            original_max_position_embeddings=32,
            rope_scaling={
                "type": "longrope",
                # head_dim 16 * 0.75 = 12 rotary dims -> 6 factors each
                "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.3],
                "long_factor": [1.0, 1.5, 2.5, 4.0, 8.0, 16.0],
            },
        ),
        embed_std=1.0,
        chat_system=True,
    ),
}

# Pre-tokenizer names written to tokenizer.ggml.pre (our tiny tokenizers have no hash that
# llama.cpp's get_vocab_base_pre recognises, so the converter is patched to return these).
GGUF_PRE = {"qwen": "qwen2", "gpt2": "gpt-2"}

PROMPT_TEXT = "The quick brown fox jumps over the lazy dog; then it rests in the sun."
RAW_PROMPT_LENGTHS = [5, 13, 20]  # total token counts (incl. BOS where the family adds one)
CHAT_USER = "What is the capital of France? Answer in one short sentence."
CHAT_SYSTEM = "Be brief."


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (as in transformers / tokenizers ByteLevel)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_llama_cpp(arg: str | None) -> Path:
    if arg:
        p = Path(arg)
        if not (p / "convert_hf_to_gguf.py").is_file():
            sys.exit(f"{p} has no convert_hf_to_gguf.py")
        return p
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metrum-fixtures"
    root = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        # --no-binary for this package only: its build deps (cmake, ninja) stay wheels.
        subprocess.check_call([sys.executable, "-m", "pip", "download",
                               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "--no-deps",
                               "--no-binary", "llama-cpp-python", "-d", str(cache)])
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/",
              prefix + "models/templates/", prefix + "LICENSE")
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(wanted)]
        tf.extractall(cache, members=members, filter="data")
    return root


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

def build_tokenizer(fam: dict):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Regex

    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for _, t in fam["lead"]:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES), byte_fallback=False,
                               ignore_merges=False))
    if fam["pre"] == "qwen":
        # as in Qwen2/2.5/3's tokenizer.json
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
    else:
        # GPT-2's byte-level BPE (regex = llama.cpp's "gpt-2" pre-tokenizer)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                     use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    if fam["add_bos"]:
        bos = fam["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                                  use_regex=False)
    added = []
    for special, t in fam["lead"] + fam["trail"]:
        added.append(AddedToken(t, special=special, normalized=False, lstrip=False, rstrip=False,
                                single_word=False))
    # add one by one in id order so ids are stable
    for a in added:
        if a.special:
            tok.add_special_tokens([a])
        else:
            tok.add_tokens([a])
    return tok


def tokenizer_config(fam: dict, tok, template: str) -> dict:
    decoder = {}
    for special, t in fam["lead"] + fam["trail"]:
        i = tok.token_to_id(t)
        decoder[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": special}
    cfg = {
        "add_bos_token": fam["add_bos"],
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": fam["bos"],
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": fam["eos"],
        "model_max_length": COMMON["max_position_embeddings"],
        "pad_token": fam["pad"],
        "tokenizer_class": fam["tokenizer_class"],
        "unk_token": fam["unk"],
    }
    return cfg


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

def make_config(name: str, fam: dict, vocab_size: int, ids: dict):
    import transformers

    kw = dict(COMMON)
    kw.update(fam["config"])
    kw["vocab_size"] = vocab_size
    kw["bos_token_id"] = ids[fam["config_bos"]]
    kw["eos_token_id"] = ids[fam["eos"]]
    kw["pad_token_id"] = ids[fam["pad"]] if fam["pad"] else None
    kw["architectures"] = [fam["arch"]]
    cls = {
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "Qwen3ForCausalLM": transformers.Qwen3Config,
        "MistralForCausalLM": transformers.MistralConfig,
        "Gemma2ForCausalLM": transformers.Gemma2Config,
        "Gemma3ForCausalLM": transformers.Gemma3TextConfig,
        "Phi3ForCausalLM": transformers.Phi3Config,
    }[fam["arch"]]
    return cls(**kw)


def init_weights(model, fam: dict, n_tokens: int, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    gemma = fam.get("gemma", False)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            shape = tuple(p.shape)
            if pname.endswith("embed_tokens.weight"):
                w = torch.randn(shape, generator=g) * fam["embed_std"]
                w[n_tokens:] = 0.0  # padding rows (vocab rounded up to a multiple of 8)
            elif pname == "lm_head.weight":
                w = torch.randn(shape, generator=g) * 0.5
                w[n_tokens:] = 0.0
            elif "norm" in pname:
                w = torch.randn(shape, generator=g) * 0.1
                if not gemma:
                    w = w + 1.0  # standard RMSNorm: weight around 1; Gemma's (1+w): w around 0
                if pname == "model.norm.weight":
                    w = w + fam.get("final_norm_offset", 0.0)
            elif pname.endswith(".bias"):
                w = torch.randn(shape, generator=g) * 0.2
            elif p.dim() == 2:
                gain = 1.0
                if any(k in pname for k in ("q_proj", "k_proj")):
                    gain = fam.get("qk_gain", 1.0)
                w = torch.randn(shape, generator=g) * (gain / math.sqrt(shape[1]))
            else:
                raise RuntimeError(f"no init rule for {pname} {shape}")
            p.copy_(w.to(p.dtype))


def load_hf(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def forward_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().clone()


def greedy_full_recompute(model, ids: list[int], n: int):
    """Greedy decoding where every step re-runs the whole sequence (no KV cache)."""
    import torch

    seq = list(ids)
    toks, margins, step_logits = [], [], []
    for _ in range(n):
        logits = forward_logits(model, seq)[-1]
        top2 = torch.topk(logits, 2)
        t = int(top2.indices[0])
        toks.append(t)
        margins.append(float(top2.values[0] - top2.values[1]))
        step_logits.append(logits)
        seq.append(t)
    return toks, margins, torch.stack(step_logits)


def greedy_generate_cached(model, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             num_beams=1, pad_token_id=0, eos_token_id=None,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return [int(x) for x in out[0, len(ids):]]


def feature_checks(name: str, model, prompts: list[list[int]]) -> dict:
    """Max |logit difference| when a feature is switched off: proves each feature matters."""
    import torch

    longest = max(prompts, key=len)
    base = forward_logits(model, longest)
    checks = {}

    def diff(other):
        return float((other - base).abs().max())

    cfg = model.config
    if getattr(cfg, "sliding_window", None):
        old = cfg.sliding_window
        cfg.sliding_window = 10_000
        checks["sliding_window_off"] = diff(forward_logits(model, longest))
        cfg.sliding_window = old
    if name == "gemma2":
        attns = [l.self_attn for l in model.model.layers]
        old = [a.attn_logit_softcapping for a in attns]
        for a in attns:
            a.attn_logit_softcapping = None
        checks["attn_logit_softcapping_off"] = diff(forward_logits(model, longest))
        for a, o in zip(attns, old):
            a.attn_logit_softcapping = o
        old_f = cfg.final_logit_softcapping
        cfg.final_logit_softcapping = None
        uncapped = forward_logits(model, longest)
        checks["final_logit_softcapping_off"] = diff(uncapped)
        checks["uncapped_final_logits_max_abs"] = float(uncapped.abs().max())
        cfg.final_logit_softcapping = old_f
    if name == "gemma3":
        rot = model.model.rotary_emb
        old = rot.sliding_attention_inv_freq.clone()
        rot.sliding_attention_inv_freq.copy_(rot.full_attention_inv_freq)
        checks["local_rope_base_equal_to_global"] = diff(forward_logits(model, longest))
        rot.sliding_attention_inv_freq.copy_(old)
    if name in ("qwen3", "gemma3"):
        # q/k norm weights -> identity
        saved = []
        for l in model.model.layers:
            for nm in ("q_norm", "k_norm"):
                w = getattr(l.self_attn, nm).weight
                saved.append((w, w.detach().clone()))
                w.data.fill_(0.0 if name == "gemma3" else 1.0)
        checks["qk_norm_weights_identity"] = diff(forward_logits(model, longest))
        for w, v in saved:
            w.data.copy_(v)
    if name == "qwen2":
        saved = []
        for l in model.model.layers:
            for nm in ("q_proj", "k_proj", "v_proj"):
                b = getattr(l.self_attn, nm).bias
                saved.append((b, b.detach().clone()))
                b.data.zero_()
        checks["qkv_bias_zero"] = diff(forward_logits(model, longest))
        for b, v in saved:
            b.data.copy_(v)
    if name == "phi4mini":
        rot = model.model.rotary_emb
        forward_logits(model, longest)  # populates rot.long_inv_freq
        long_inv = rot.long_inv_freq.clone()
        rot.long_inv_freq = rot.original_inv_freq.clone()
        checks["long_factors_replaced_by_short"] = diff(forward_logits(model, longest))
        rot.long_inv_freq = long_inv
        checks["attention_scaling_on_cos_sin"] = float(rot.attention_scaling)
    # make sure we restored everything
    assert torch.equal(forward_logits(model, longest), base)
    return checks


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's converter, run in a subprocess so its vendored gguf-py is the one imported)
# ---------------------------------------------------------------------------------------------

PATCHES = """
Patches applied to llama.cpp's converter (in-process monkeypatches, nothing edited on disk):
 P1 TextModel.get_vocab_base_pre returns a fixed pre-tokenizer name ("qwen2" for the Qwen
    fixtures, "gpt-2" for the others): the tiny tokenizers hash to nothing llama.cpp knows.
 P2 Gemma2Model.set_vocab uses _set_vocab_gpt2 (upstream requires a SentencePiece
    tokenizer.model; Gemma3Model already falls back to gpt2 when tokenizer.model is absent).
 P3 LlamaModel (Mistral): also writes llama.attention.sliding_window when config.json has
    sliding_window (upstream drops it; llama.cpp's llama arch neither writes nor reads it).
 P4 Gemma2Model/Gemma3Model: also write <arch>.attention.scale = query_pre_attn_scalar**-0.5
    when query_pre_attn_scalar != head_dim (GGUF has no field for it; llama.cpp derives the
    scale from the layer count: 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) for 27B).
 P5 Gemma3Model: also writes gemma3.attention.sliding_window_pattern as a per-layer bool array
    from layer_types (upstream writes none and llama.cpp then assumes 5 sliding : 1 full,
    i.e. layer il is sliding iff il % 6 < 5; llama.cpp does read the array when present).
"""

CONVERT_DRIVER = r'''
import sys, json
from pathlib import Path
llama_dir, model_dir, out, pre = sys.argv[1:5]
sys.path.insert(0, llama_dir)
sys.path.insert(1, str(Path(llama_dir) / "gguf-py"))
import gguf
assert str(Path(gguf.__file__).resolve()).startswith(str(Path(llama_dir).resolve())), gguf.__file__
import convert_hf_to_gguf as conv
from conversion import base, llama, gemma, qwen, phi

# P1
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
# P2
gemma.Gemma2Model.set_vocab = lambda self: self._set_vocab_gpt2()
# P3
_llama_sgp = llama.LlamaModel.set_gguf_parameters
def _llama_sgp2(self):
    _llama_sgp(self)
    if self.hparams.get("sliding_window"):
        self.gguf_writer.add_sliding_window(self.hparams["sliding_window"])
llama.LlamaModel.set_gguf_parameters = _llama_sgp2
# P4 + P5
def _wrap_gemma(cls, pattern):
    orig = cls.set_gguf_parameters
    def f(self):
        orig(self)
        hp = self.hparams
        q = hp.get("query_pre_attn_scalar")
        if q is not None and q != hp["head_dim"]:
            self.gguf_writer.add_attention_scale(float(q) ** -0.5)
        if pattern and hp.get("layer_types"):
            self.gguf_writer.add_sliding_window_pattern([t == "sliding_attention" for t in hp["layer_types"]])
    cls.set_gguf_parameters = f
_wrap_gemma(gemma.Gemma2Model, False)
_wrap_gemma(gemma.Gemma3Model, True)

sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", out, "--outtype", "f32"]
conv.main()
'''


def convert_gguf(llama_dir: Path, model_dir: Path, out: Path, pre: str) -> str:
    with tempfile.TemporaryDirectory() as td:
        drv = Path(td) / "drive_convert.py"
        drv.write_text(CONVERT_DRIVER)
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)
        r = subprocess.run([sys.executable, str(drv), str(llama_dir), str(model_dir), str(out), pre],
                           capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise RuntimeError(f"converter failed for {model_dir}")
    return r.stdout + r.stderr


def gguf_reader_summary(path: Path) -> tuple[dict, dict]:
    """Keys -> python values, tensors -> (dtype name, numpy array in PyTorch's shape)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(str(path))
    kv = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY:
            vals = [f.parts[i] for i in f.data]
            if f.types[-1] == GGUFValueType.STRING:
                kv[f.name] = [bytes(v).decode("utf-8") for v in vals]
            else:
                kv[f.name] = [v.tolist()[0] for v in vals]
        elif f.types and f.types[0] == GGUFValueType.STRING:
            kv[f.name] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            kv[f.name] = f.parts[f.data[0]].tolist()[0]
    tensors = {}
    for t in r.tensors:
        arr = np.array(t.data)
        # GGUF lists dims fastest-first; PyTorch order is the reverse
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        tensors[t.name] = (t.tensor_type.name, arr.reshape(shape))
    return kv, tensors


def llama_permute(w, n_head: int):
    """convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> GGML interleaved pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama_unpermute(w, n_head: int):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_to_hf_state_dict(name: str, fam: dict, cfg, tensors: dict) -> dict:
    """Inverse of the converter's mapping for our families; every GGUF tensor must be used."""
    import torch

    gemma = fam.get("gemma", False)
    sd = {}
    used = set()

    def take(gname):
        used.add(gname)
        return torch.from_numpy(tensors[gname][1].copy())

    def norm(gname):
        w = take(gname)
        return w - 1.0 if gemma else w  # converter stored (1 + w) for Gemma

    sd["model.embed_tokens.weight"] = take("token_embd.weight")
    sd["model.norm.weight"] = norm("output_norm.weight")
    if "output.weight" in tensors:
        sd["lm_head.weight"] = take("output.weight")
    for i in range(cfg.num_hidden_layers):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        sd[h + "input_layernorm.weight"] = norm(b + "attn_norm.weight")
        if name.startswith("phi"):
            sd[h + "self_attn.qkv_proj.weight"] = take(b + "attn_qkv.weight")
            sd[h + "mlp.gate_up_proj.weight"] = take(b + "ffn_up.weight")
        else:
            for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
                for suf in ("weight", "bias"):
                    if f"{b}{gg}.{suf}" in tensors:
                        w = take(f"{b}{gg}.{suf}")
                        if name == "mistral" and hf in ("q_proj", "k_proj"):
                            nh = cfg.num_attention_heads if hf == "q_proj" else cfg.num_key_value_heads
                            w = llama_unpermute(w, nh)
                        sd[f"{h}self_attn.{hf}.{suf}"] = w
            sd[h + "mlp.gate_proj.weight"] = take(b + "ffn_gate.weight")
            sd[h + "mlp.up_proj.weight"] = take(b + "ffn_up.weight")
        sd[h + "self_attn.o_proj.weight"] = take(b + "attn_output.weight")
        sd[h + "mlp.down_proj.weight"] = take(b + "ffn_down.weight")
        if f"{b}attn_q_norm.weight" in tensors:
            sd[h + "self_attn.q_norm.weight"] = norm(b + "attn_q_norm.weight")
            sd[h + "self_attn.k_norm.weight"] = norm(b + "attn_k_norm.weight")
        if gemma:
            sd[h + "post_attention_layernorm.weight"] = norm(b + "post_attention_norm.weight")
            sd[h + "pre_feedforward_layernorm.weight"] = norm(b + "ffn_norm.weight")
            sd[h + "post_feedforward_layernorm.weight"] = norm(b + "post_ffw_norm.weight")
        else:
            sd[h + "post_attention_layernorm.weight"] = norm(b + "ffn_norm.weight")
    for extra in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if extra in tensors:
            used.add(extra)
    unused = set(tensors) - used
    if unused:
        raise RuntimeError(f"{name}: GGUF tensors not mapped back: {sorted(unused)}")
    return sd


# ---------------------------------------------------------------------------------------------
# main per-family build
# ---------------------------------------------------------------------------------------------

def build_family(name: str, idx: int, out_root: Path, llama_dir: Path | None, templates_dir: Path | None,
                 do_gguf: bool) -> dict:
    import numpy as np
    import safetensors.torch
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    fam = FAMILIES[name]
    seed = BASE_SEED + idx
    d = out_root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    # ---- tokenizer
    tok = build_tokenizer(fam)
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    # config vocab_size rounded up to a multiple of 8: the extra embedding rows are padding (zeros),
    # as in real checkpoints. Not for gemma3: its converter trims token_embd to
    # len(tokenizer.json vocab) + len(added_tokens) (which double-counts Gemma's specials) while
    # the GGUF token list keeps vocab_size entries, so padding would make an inconsistent GGUF.
    vocab_size = n_tokens if fam.get("no_vocab_padding") else (n_tokens + 7) // 8 * 8
    ids = {t: tok.token_to_id(t) for _, t in fam["lead"] + fam["trail"]}
    if "template_text" in fam:
        template = fam["template_text"]
    else:
        template = (templates_dir / fam["template_file"]).read_text(encoding="utf-8")
    tok.save(str(d / "tokenizer.json"), pretty=True)
    write_json(d / "tokenizer_config.json", tokenizer_config(fam, tok, template))

    # ---- model
    torch.manual_seed(seed)
    cfg = make_config(name, fam, vocab_size, ids)
    cls = getattr(transformers, fam["arch"])
    model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, fam, n_tokens, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[fam["config_bos"]],
        eos_token_id=[ids[t] for t in fam["gen_eos"]] if len(fam["gen_eos"]) > 1 else ids[fam["gen_eos"][0]],
        pad_token_id=ids[fam["pad"]] if fam["pad"] else None,
    )
    model.save_pretrained(d)
    for extra in d.iterdir():
        if extra.name not in ("config.json", "generation_config.json", "model.safetensors",
                              "tokenizer.json", "tokenizer_config.json"):
            extra.unlink()

    # ---- reload and reference outputs
    model = load_hf(d)
    assert model.config._attn_implementation == "eager"
    hf_tok = AutoTokenizer.from_pretrained(d)
    file_tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))

    prompts = []
    bos_ids = [ids[fam["bos"]]] if fam["add_bos"] else []
    text_bytes = PROMPT_TEXT.encode()
    for n in RAW_PROMPT_LENGTHS:
        body = [tok.token_to_id(bytes_to_unicode()[b]) for b in text_bytes[: n - len(bos_ids)]]
        prompts.append(dict(kind="raw_bytes", text=text_bytes[: n - len(bos_ids)].decode(),
                            ids=bos_ids + body))
    msgs = [{"role": "user", "content": CHAT_USER}]
    if name == "qwen2":  # avoid Qwen2.5's long default system prompt
        msgs = [{"role": "system", "content": CHAT_SYSTEM}] + msgs
    chat_text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    chat_ids = hf_tok(chat_text, add_special_tokens=False)["input_ids"]
    assert chat_ids == file_tok.encode(chat_text, add_special_tokens=False).ids
    prompts.append(dict(kind="chat_template", messages=msgs, text=chat_text, ids=chat_ids))

    # tokenizer cross-check: transformers vs the tokenizer.json file (with specials, with BOS)
    for s in [PROMPT_TEXT, " the cat is on the mat, then there", chat_text, "naïve café 123 ünïcödé 😀"]:
        a = hf_tok(s)["input_ids"]
        b = file_tok.encode(s).ids
        assert a == b, (name, s, a, b)

    ref_tensors = {}
    out_prompts = []
    for pi, p in enumerate(prompts):
        logits = forward_logits(model, p["ids"])
        toks, margins, step_logits = greedy_full_recompute(model, p["ids"], N_GREEDY)
        cached = greedy_generate_cached(model, p["ids"], N_GREEDY)
        # the greedy continuation's first token is the argmax of the prompt's last position
        assert toks[0] == int(torch.argmax(logits[-1]))
        assert all(t < n_tokens for t in toks), "greedy picked a padding row"
        ref_tensors[f"prompt.{pi}.logits"] = logits.contiguous()
        ref_tensors[f"prompt.{pi}.greedy_step_logits"] = step_logits.contiguous()
        entry = dict(p)
        entry.update(
            length=len(p["ids"]),
            greedy_tokens=toks,
            greedy_top2_margins=margins,
            greedy_min_margin=min(margins),
            greedy_text=hf_tok.decode(toks, skip_special_tokens=False),
            generate_cached_tokens=cached,
            generate_cached_matches_full_recompute=cached == toks,
            logits_tensor=f"prompt.{pi}.logits",
            greedy_step_logits_tensor=f"prompt.{pi}.greedy_step_logits",
            last_position_top5=[int(x) for x in torch.topk(logits[-1], 5).indices],
        )
        if name == "phi4mini":
            orig = model.config.rope_parameters["original_max_position_embeddings"]
            entry["longrope_factors_used"] = "long" if len(p["ids"]) > orig else "short"
            entry["longrope_factors_used_by_last_greedy_step"] = (
                "long" if len(p["ids"]) + N_GREEDY - 1 > orig else "short")
        out_prompts.append(entry)

    # chat template renders for the Rust template tests
    chat_examples = []
    convs = [
        [{"role": "user", "content": CHAT_USER}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": CHAT_USER}],
        [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": CHAT_USER}],
    ]
    for conv in convs:
        for agp in (True, False):
            ex = dict(messages=conv, add_generation_prompt=agp)
            try:
                text = hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                ex["text"] = text
                ex["ids"] = hf_tok(text, add_special_tokens=False)["input_ids"]
            except Exception as e:  # e.g. Gemma 2 refuses a system message
                ex["error"] = str(e)
            chat_examples.append(ex)

    checks = feature_checks(name, model, [p["ids"] for p in prompts])

    safetensors.torch.save_file(ref_tensors, str(d / "reference.safetensors"), metadata={"format": "pt"})

    # ---- GGUF
    gguf_info = None
    if do_gguf:
        gguf_path = d / "model.gguf"
        log = convert_gguf(llama_dir, d, gguf_path, GGUF_PRE[fam["pre"]])
        kv, tensors = gguf_reader_summary(gguf_path)
        # vocab equals the tokenizer's, padded with [PADn] up to vocab_size
        toks_gguf = kv["tokenizer.ggml.tokens"]
        inv = {v: k for k, v in tok.get_vocab(with_added_tokens=True).items()}
        expect = [inv.get(i, f"[PAD{i}]") for i in range(vocab_size)]
        assert toks_gguf == expect, (name, "gguf vocab mismatch")
        # logits from GGUF weights mapped back to HF names
        sd = gguf_to_hf_state_dict(name, fam, model.config, tensors)
        m2 = load_hf(d)
        missing, unexpected = m2.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
        assert not missing and not unexpected, (missing, unexpected)
        if model.config.tie_word_embeddings:
            m2.tie_weights()
        gguf_max_diff = 0.0
        for pi, p in enumerate(prompts):
            l2 = forward_logits(m2, p["ids"])
            gguf_max_diff = max(gguf_max_diff, float((l2 - ref_tensors[f"prompt.{pi}.logits"]).abs().max()))
        if name == "phi4mini":
            rs = model.config.rope_parameters
            assert tensors["rope_factors_long.weight"][1].tolist() == [np.float32(x) for x in rs["long_factor"]]
            assert tensors["rope_factors_short.weight"][1].tolist() == [np.float32(x) for x in rs["short_factor"]]
        gguf_info = dict(
            file="model.gguf",
            sha256=sha256(gguf_path),
            max_abs_logit_diff_vs_reference_when_mapped_back=gguf_max_diff,
            metadata={k: v for k, v in kv.items() if not k.startswith("tokenizer.ggml.") or
                      k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
                            "tokenizer.ggml.add_eos_token")},
            tokenizer_keys=sorted(k for k in kv if k.startswith("tokenizer.")),
            tensors={k: dict(dtype=v[0], shape=list(v[1].shape)) for k, v in sorted(tensors.items())},
        )
        gguf_info["metadata"].pop("tokenizer.chat_template", None)
        gguf_info["chat_template_equals_tokenizer_config"] = kv.get("tokenizer.chat_template") == template
        assert gguf_max_diff == 0.0, (name, gguf_max_diff)

    # ---- reload check of the saved HF files
    m3 = load_hf(d)
    for pi, p in enumerate(prompts):
        assert torch.equal(forward_logits(m3, p["ids"]), ref_tensors[f"prompt.{pi}.logits"])

    ref = dict(
        family=name,
        architecture=fam["arch"],
        versions=dict(transformers=transformers.__version__, torch=torch.__version__.split("+")[0],
                      tokenizers=tokenizers.__version__, safetensors=safetensors.__version__,
                      numpy=np.__version__,
                      llama_cpp_python_sdist=LLAMA_CPP_PYTHON_VERSION if do_gguf else None),
        seed=seed,
        dtype="float32",
        attn_implementation="eager",
        vocab_size=vocab_size,
        tokenizer_size=n_tokens,
        special_token_ids=ids,
        logits_file="reference.safetensors",
        logits_note=("reference.safetensors holds f32 tensors 'prompt.<i>.logits' [len, vocab_size] "
                     "(one forward of the whole prompt, no cache) and 'prompt.<i>.greedy_step_logits' "
                     f"[{N_GREEDY}, vocab_size] (the last-position logits at each greedy step)."),
        greedy_note=(f"{N_GREEDY} greedy tokens, each step a full forward of prompt + tokens so far "
                     "(no KV cache); EOS does not stop it. margin = top1 - top2 logit at that step. "
                     "generate_cached_tokens: model.generate(do_sample=False) with transformers' "
                     "KV cache, for comparison."),
        prompts=out_prompts,
        feature_checks=checks,
        chat_examples=chat_examples,
        gguf=gguf_info,
    )
    write_json(d / "reference.json", ref)
    sizes = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
    return dict(name=name, sizes=sizes, checks=checks, gguf=gguf_info is not None,
                margins=[p["greedy_min_margin"] for p in out_prompts],
                lengths=[p["length"] for p in out_prompts],
                cached_match=[p["generate_cached_matches_full_recompute"] for p in out_prompts],
                gguf_diff=None if gguf_info is None else gguf_info["max_abs_logit_diff_vs_reference_when_mapped_back"])


def verify(out_root: Path, names: list[str]) -> None:
    """Check committed fixtures: reload with transformers, recompute the logits and greedy tokens,
    compare with reference.safetensors / reference.json, and parse model.gguf with GGUFReader."""
    import safetensors.torch
    import torch

    for name in names:
        d = out_root / name
        ref = json.loads((d / "reference.json").read_text())
        tens = safetensors.torch.load_file(str(d / "reference.safetensors"))
        model = load_hf(d)
        worst = 0.0
        for pi, p in enumerate(ref["prompts"]):
            logits = forward_logits(model, p["ids"])
            worst = max(worst, float((logits - tens[f"prompt.{pi}.logits"]).abs().max()))
            toks, margins, step = greedy_full_recompute(model, p["ids"], N_GREEDY)
            assert toks == p["greedy_tokens"], (name, pi)
            assert torch.equal(step, tens[f"prompt.{pi}.greedy_step_logits"]), (name, pi)
        line = f"{name}: HF reload max|dlogit| = {worst}"
        if (d / "model.gguf").exists():
            kv, tensors = gguf_reader_summary(d / "model.gguf")
            line += (f"; GGUF arch={kv['general.architecture']} keys={len(kv)} tensors={len(tensors)}\n    "
                     + "\n    ".join(f"{k} = {v if not isinstance(v, list) else f'[{len(v)} items]'}"
                                      if k != "tokenizer.chat_template" else f"{k} = <{len(v)} chars>"
                                      for k, v in kv.items()))
        print(line)
        assert worst == 0.0, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated family names")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--llama-cpp", help="llama.cpp tree (default: the pinned llama-cpp-python sdist's)")
    ap.add_argument("--no-gguf", action="store_true")
    ap.add_argument("--verify", action="store_true",
                    help="only check the existing fixtures against their reference files")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # determinism and a light footprint
    torch.use_deterministic_algorithms(True)
    names = list(FAMILIES) if not args.only else args.only.split(",")
    if args.verify:
        verify(Path(args.out), names)
        return
    llama_dir = ensure_llama_cpp(args.llama_cpp)
    templates_dir = llama_dir / "models" / "templates"
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    for name in names:
        idx = list(FAMILIES).index(name)
        info = build_family(name, idx, out_root, llama_dir, templates_dir, not args.no_gguf)
        print(json.dumps(info))


if __name__ == "__main__":
    main()
