#!/usr/bin/env python3
"""Build the tiny mixture-of-experts fixtures under engine/tests/fixtures/moe/ (issue 20).

For Mixtral and Qwen3-MoE this script builds a tiny random model with HF transformers from a
fixed seed, saves it with `save_pretrained` (config.json, model.safetensors, f32: the
checkpoints' per-expert tensor names), writes transformers' reference outputs in the format of
the families fixtures (reference.json: prompts, greedy tokens, top-2 margins; and
reference.safetensors: the logits of every prompt position and of every greedy step), and
writes model.gguf (f32) with the `gguf` package under llama.cpp's names: `llama` with
`llama.expert_count` for Mixtral (q/k rows permuted as llama.cpp's converter does), `qwen3moe`
for Qwen3-MoE, the experts stacked in 3-D `ffn_{gate,up,down}_exps`, the router in
`ffn_gate_inp`. The references' prompts are token ids; for serving over the API (server/tests/
http_moe.rs) each fixture also carries a tiny SentencePiece-style tokenizer that fits the
128-token vocabulary (see `tokenizer_vocab`): tokenizer.json + tokenizer_config.json (with a chat
template: Mixtral's [INST] format, ChatML for Qwen3-MoE) and the same vocabulary as GGUF `llama`
tokenizer metadata, so the GGUF is self-contained for Metrum and llama.cpp.

The Qwen3-MoE fixture keeps transformers' default norm_topk_prob=false (its GGUF says so with
`qwen3moe.expert_weights_norm = false`); Mixtral always renormalises. Both routers are large
enough that one step's tokens go to different experts.

Run by hand (not in CI), with scripts/requirements-fixtures.txt installed:
    python3 scripts/make_moe_fixtures.py
Deterministic for the pinned versions. Adding the tokenizer to the committed fixtures without
rebuilding them (no torch; needs only `gguf` and numpy, e.g. target/llamacpp-venv):
    target/llamacpp-venv/bin/python scripts/make_moe_fixtures.py --tokenizer-only
rewrites tokenizer.json, tokenizer_config.json and model.gguf from the committed
model.safetensors + config.json; the weights, hence reference.*, stay as they are.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_family_fixtures import (  # noqa: E402  (one home for the reference helpers)
    N_GREEDY, forward_logits, greedy_full_recompute, llama_permute, load_hf, write_json)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "engine" / "tests" / "fixtures" / "moe"
SEED = 20261220
VOCAB = 128
PROMPT_LENGTHS = [5, 13, 20]

COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

MODELS = {
    "mixtral": dict(arch="MixtralForCausalLM", gguf_arch="llama",
                    config=dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                                rope_theta=10000.0, sliding_window=None)),
    "qwen3moe": dict(arch="Qwen3MoeForCausalLM", gguf_arch="qwen3moe",
                     config=dict(intermediate_size=96, head_dim=32, num_experts=8,
                                 num_experts_per_tok=2, moe_intermediate_size=32,
                                 norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                                 rope_theta=10000.0, use_sliding_window=False)),
}


def init_weights(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if "norm" in name:
                w = 1.0 + torch.randn(shape, generator=g) * 0.1
            elif name.endswith("embed_tokens.weight"):
                w = torch.randn(shape, generator=g)
            elif name.endswith(".gate.weight"):
                # router: logits of order 1-3 so routing is decisive but varied
                w = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[1]))
            else:
                w = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            p.copy_(w)


# ---- tokenizer: a SentencePiece-style vocabulary of exactly VOCAB pieces, shared by both fixtures.
# ids 0-2 are <unk>/<s>/</s> (COMMON's bos/eos), then each family's chat markers (control), then
# single characters and a few joined pieces (score = merge priority). No byte fallback: characters
# outside the vocabulary become <unk>.
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<|im_start|>", "<|im_end|>"]
CHARS = (["\u2581", "\n"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
         + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [str(d) for d in range(10)]
         + list(".,?!'\":;-()+=*/"))
JOINED = ["\u2581t", "\u2581a", "\u2581w", "\u2581i", "\u2581s", "\u2581o", "\u2581c", "\u2581h",
          "th", "he", "in", "er", "an", "re", "on", "at", "en", "is", "ou", "it", "es", "or",
          "ar", "te", "ed", "nd", "ha", "to", "st", "ng", "\u2581th", "\u2581the", "\u2581is",
          "\u2581wh", "\u2581what", "\u25812", "ll", "\u2581he", "\u2581hell", "\u2581hello",
          "el", "lo"]
TEMPLATES = {
    # Mistral's v0.1 instruct format (the Mixtral-8x7B-Instruct template, system folded away).
    "mixtral": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
                "'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"),
    # ChatML, as Qwen3's template renders a plain conversation.
    "qwen3moe": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
}


def tokenizer_vocab() -> tuple[list[str], list[int], list[float]]:
    """(pieces, GGUF token types, scores): 2 = unknown, 3 = control, 1 = normal."""
    pieces = SPECIALS + CHARS + JOINED
    assert len(pieces) == VOCAB and len(set(pieces)) == VOCAB, len(pieces)
    types = [2] + [3] * (len(SPECIALS) - 1) + [1] * (len(CHARS) + len(JOINED))
    scores = [0.0] * len(SPECIALS) + [-1000.0] * len(CHARS) + [-float(i) for i in range(len(JOINED))]
    return pieces, types, scores


def tokenizer_json() -> dict:
    """The tokenizer.json Metrum builds from the GGUF metadata below (engine/src/tokenizer/gguf.rs,
    spm_parts without a space prefix), so both serving paths tokenize alike."""
    pieces, types, scores = tokenizer_vocab()
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []  # every split of a joined piece into two pieces, best score first
    for i, p in enumerate(pieces):
        if types[i] != 1:
            continue
        for k in range(1, len(p)):
            if p[:k] in ids and p[k:] in ids and types[ids[p[:k]]] == 1 and types[ids[p[k:]]] == 1:
                merges.append((-scores[i], i, ids[p[:k]], ids[p[k:]]))
    merges.sort()
    added = [dict(id=i, content=p, single_word=False, lstrip=False, rstrip=False, normalized=False,
                  special=True) for i, p in enumerate(pieces) if types[i] in (2, 3)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": False, "ignore_merges": False,
                  "vocab": {p: i for i, p in enumerate(pieces)},
                  "merges": [[pieces[a], pieces[b]] for _, _, a, b in merges]},
    }


def write_tokenizer_files(name: str, d: Path) -> None:
    write_json(d / "tokenizer.json", tokenizer_json())
    write_json(d / "tokenizer_config.json", dict(
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=False,
        add_eos_token=False, chat_template=TEMPLATES[name], model_max_length=256,
        tokenizer_class="LlamaTokenizerFast"))


def add_gguf_tokenizer(w, name: str) -> None:
    pieces, types, scores = tokenizer_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(TEMPLATES[name])


def load_safetensors_f32(path: Path) -> dict:
    """model.safetensors (all F32, as save_pretrained wrote it) without the safetensors package."""
    import numpy as np

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        assert info["dtype"] == "F32", (key, info["dtype"])
        a, b = info["data_offsets"]
        out[key] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


def write_gguf(name: str, spec: dict, cfg, d: Path) -> None:
    import gguf
    import numpy as np

    sd = load_safetensors_f32(d / "model.safetensors")
    arch = spec["gguf_arch"]
    w = gguf.GGUFWriter(str(d / "model.gguf"), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    n_exp = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if name == "qwen3moe":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        w.add_bool(f"{arch}.expert_weights_norm", bool(cfg.norm_topk_prob))
    w.add_rope_dimension_count(head_dim)
    add_gguf_tokenizer(w, name)

    def t(gname, arr):
        w.add_tensor(gname, np.ascontiguousarray(arr.astype(np.float32)))

    t("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        h, b = f"model.layers.{i}.", f"blk.{i}."
        t(b + "attn_norm.weight", sd[h + "input_layernorm.weight"])
        q, k = sd[h + "self_attn.q_proj.weight"], sd[h + "self_attn.k_proj.weight"]
        if name == "mixtral":  # llama.cpp's converter permutes q/k for interleaved RoPE
            q = llama_permute(q, cfg.num_attention_heads)
            k = llama_permute(k, cfg.num_key_value_heads)
        t(b + "attn_q.weight", q)
        t(b + "attn_k.weight", k)
        t(b + "attn_v.weight", sd[h + "self_attn.v_proj.weight"])
        t(b + "attn_output.weight", sd[h + "self_attn.o_proj.weight"])
        if name == "qwen3moe":
            t(b + "attn_q_norm.weight", sd[h + "self_attn.q_norm.weight"])
            t(b + "attn_k_norm.weight", sd[h + "self_attn.k_norm.weight"])
        t(b + "ffn_norm.weight", sd[h + "post_attention_layernorm.weight"])
        block, (g_, u_, d_) = (("block_sparse_moe", ("w1", "w3", "w2")) if name == "mixtral"
                               else ("mlp", ("gate_proj", "up_proj", "down_proj")))
        t(b + "ffn_gate_inp.weight", sd[f"{h}{block}.gate.weight"])
        for part, gg in ((g_, "ffn_gate_exps"), (u_, "ffn_up_exps"), (d_, "ffn_down_exps")):
            t(b + f"{gg}.weight",
              np.stack([sd[f"{h}{block}.experts.{e}.{part}.weight"] for e in range(n_exp)]))
    t("output_norm.weight", sd["model.norm.weight"])
    t("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build(name: str, idx: int) -> dict:
    import safetensors.torch
    import torch
    import transformers

    spec = MODELS[name]
    seed = SEED + idx
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    torch.manual_seed(seed)
    cfg_cls = {"MixtralForCausalLM": transformers.MixtralConfig,
               "Qwen3MoeForCausalLM": transformers.Qwen3MoeConfig}[spec["arch"]]
    cfg = cfg_cls(architectures=[spec["arch"]], **COMMON, **spec["config"])
    model = getattr(transformers, spec["arch"])._from_config(
        cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, seed)
    model.save_pretrained(d)
    for extra in d.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    model = load_hf(d)
    g = torch.Generator().manual_seed(seed)
    prompts, tensors = [], {}
    for pi, n in enumerate(PROMPT_LENGTHS):
        ids = [int(x) for x in torch.randint(3, VOCAB, (n,), generator=g)]
        logits = forward_logits(model, ids)
        toks, margins, steps = greedy_full_recompute(model, ids, N_GREEDY)
        tensors[f"prompt.{pi}.logits"] = logits.contiguous()
        tensors[f"prompt.{pi}.greedy_step_logits"] = steps.contiguous()
        prompts.append(dict(ids=ids, length=n, greedy_tokens=toks, greedy_top2_margins=margins,
                            greedy_min_margin=min(margins), logits_tensor=f"prompt.{pi}.logits",
                            greedy_step_logits_tensor=f"prompt.{pi}.greedy_step_logits"))
    # How many experts one step's tokens reach in layer 0 (the mixed-batch test relies on >1).
    longest = max(prompts, key=lambda p: p["length"])["ids"]
    with torch.no_grad():
        hidden = model.model.embed_tokens(torch.tensor([longest]))
        layer = model.model.layers[0]
        normed = layer.input_layernorm(hidden)  # router input differs, but attention is cheap to skip
        block = getattr(layer, "block_sparse_moe", None) or layer.mlp
        _, _, chosen = block.gate(normed.reshape(-1, cfg.hidden_size))
    safetensors.torch.save_file(tensors, str(d / "reference.safetensors"), metadata={"format": "pt"})
    write_gguf(name, spec, model.config, d)
    write_tokenizer_files(name, d)
    ref = dict(family=name, architecture=spec["arch"], seed=seed, dtype="float32",
               attn_implementation="eager",
               versions=dict(transformers=transformers.__version__,
                             torch=torch.__version__.split("+")[0]),
               note=("reference.safetensors: 'prompt.<i>.logits' [len, vocab] (one forward of the "
                     "prompt) and 'prompt.<i>.greedy_step_logits' [12, vocab]; greedy = full "
                     "recompute each step. model.gguf: the same f32 weights under llama.cpp's "
                     "names, written by scripts/make_moe_fixtures.py."),
               experts_hit_by_longest_prompt_embeddings_layer0=sorted(set(chosen.flatten().tolist())),
               prompts=prompts)
    write_json(d / "reference.json", ref)
    return dict(name=name, margins=[p["greedy_min_margin"] for p in prompts],
                sizes={p.name: p.stat().st_size for p in sorted(d.iterdir())},
                experts=ref["experts_hit_by_longest_prompt_embeddings_layer0"])


def add_tokenizer_only() -> None:
    """The tokenizer files and GGUF metadata for the committed fixtures, weights untouched."""
    for name, spec in MODELS.items():
        d = OUT / name
        cfg = SimpleNamespace(**json.loads((d / "config.json").read_text()))
        write_gguf(name, spec, cfg, d)
        write_tokenizer_files(name, d)
        print(json.dumps(dict(name=name, sizes={p.name: p.stat().st_size for p in sorted(d.iterdir())})))


def main() -> None:
    if "--tokenizer-only" in sys.argv[1:]:
        add_tokenizer_only()
        return
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for idx, name in enumerate(MODELS):
        print(json.dumps(build(name, idx)))


if __name__ == "__main__":
    main()
