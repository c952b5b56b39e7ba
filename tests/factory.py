"""Tiny Hugging Face models for tests: random-init transformers models saved with ``save_pretrained``.

``make_hf_model(dir, arch="llama", tokenizer=None, tied=False, dtype="float32", kquant=False, **overrides)``
writes a complete model folder (config.json, safetensors, tokenizer files trained locally by
``tokfactory``) and returns ``dir``. Shapes are small but realistic: GQA (4 query heads, 2 kv heads),
2 layers, rows a multiple of 32 (Q8_0); ``kquant=True`` makes every row length a multiple of 256 so
k-quants apply. ``pad_vocab`` pads the embedding past the tokenizer's size, as Phi-3 does.
``shard_size="200KB"`` saves sharded safetensors with ``model.safetensors.index.json``.

``cached_hf_model(**same)`` builds each distinct model once per test session (in a temporary folder
removed at exit): treat its folder as read-only and copy it (``copy_model``) before damaging it.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from tests import tokfactory

# arch -> (transformers config class, model class) names; one line per family
MODEL_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "granite": ("GraniteConfig", "GraniteForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "lfm2": ("Lfm2Config", "Lfm2ForCausalLM"),
    "qwen35": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"),
    "qwen35moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"),
    "qwen3next": ("Qwen3NextConfig", "Qwen3NextForCausalLM"),
    "lfm2moe": ("Lfm2MoeConfig", "Lfm2MoeForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "gemma3_mm": ("Gemma3Config", "Gemma3ForConditionalGeneration"),  # text config wrapped: CONFIG_WRAPPERS
}
ARCHS = tuple(MODEL_CLASSES)
# arch -> default tokenizer: "spm" (SentencePiece) or "bpe:<scheme>" (byte-level BPE, tokfactory scheme)
DEFAULT_TOKENIZER = {"llama": "spm", "mistral": "spm", "qwen2": "bpe:qwen2", "phi3": "spm"}
DEFAULT_TOKENIZER.update({"qwen3": "bpe:qwen2", "smollm3": "bpe:llama3", "granite": "bpe:starcoder",
                          "olmo2": "bpe:dbrx"})
DEFAULT_TOKENIZER.update({"gemma2": "spm:gemma", "gemma3": "spm:gemma", "gemma3_mm": "spm:gemma"})
DEFAULT_TOKENIZER.update({"mixtral": "spm", "qwen3moe": "bpe:qwen2", "lfm2": "bpe:llama3"})
# arch -> config keys a family needs beyond the common small shape (overridable per model)
ARCH_DEFAULTS: dict[str, dict] = {
    "phi3": {"original_max_position_embeddings": 256},
    "qwen3": {"head_dim": 32},  # != hidden / heads, as in the real ones (k-quant tests pass head_dim=128)
    "smollm3": {"num_hidden_layers": 4},  # layer 3 is a no-rope layer
    "granite": {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.1,
                "logits_scaling": 2.0},
    # Gemma: a window of 8 < the harness's 25 tokens; small soft-caps so tanh bends; head_dim != hidden/heads
    # and query_pre_attn_scalar != head_dim (the scale is folded into q); eos and <end_of_turn> end generation
    "gemma2": {"tie_word_embeddings": True, "head_dim": 32, "sliding_window": 8, "query_pre_attn_scalar": 24,
               "attn_logit_softcapping": 3.0, "final_logit_softcapping": 5.0, "eos_token_id": [1, 7]},
    "gemma3": {"num_hidden_layers": 6, "head_dim": 32, "sliding_window": 8, "query_pre_attn_scalar": 24,
               "eos_token_id": [1, 7], "rope_parameters": {
                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                   "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}},
}
# MoE: 4 experts, top-2 routing (k-quant tests pass moe_intermediate_size=256); LFM2: conv, attention, conv
ARCH_DEFAULTS["mixtral"] = {"num_local_experts": 4, "num_experts_per_tok": 2}
ARCH_DEFAULTS["qwen3moe"] = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                             "norm_topk_prob": True, "head_dim": 32}
ARCH_DEFAULTS["lfm2"] = {"num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"]}
ARCH_DEFAULTS["gemma3_mm"] = {**ARCH_DEFAULTS["gemma3"], "num_hidden_layers": 2}
# Gemma 3n (reach, issue 18): as E2B is built — 4:1 sliding/full, the last 2 of 22 layers reuse the KV of layers
# 18/19 (llama.cpp keeps KV for 20), sparsity 0.95 on layers 0-9, AltUp 4, LAuReL 64, 256 per-layer dims
_G3N_TYPES = ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(21)] + ["full_attention"]
MODEL_CLASSES["gemma3n"] = ("Gemma3nTextConfig", "Gemma3nForCausalLM")
DEFAULT_TOKENIZER["gemma3n"] = "spm:gemma"
ARCH_DEFAULTS["gemma3n"] = {"num_hidden_layers": 22, "layer_types": _G3N_TYPES, "num_kv_shared_layers": 2,
                            "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 12, "head_dim": 256,
                            "num_attention_heads": 2, "num_key_value_heads": 1, "sliding_window": 8,
                            "eos_token_id": [1, 7], "tie_word_embeddings": True}
# Gemma 4 E2B-style: sliding/full alternating, layers 4-5 reuse the KV of layers 2-3 and have a double-wide MLP,
# 256 per-layer dims, full layers with a 512 head and proportional rope over a quarter of it (transformers' default)
MODEL_CLASSES["gemma4"] = ("Gemma4TextConfig", "Gemma4ForCausalLM")
DEFAULT_TOKENIZER["gemma4"] = "spm:gemma4"
ARCH_DEFAULTS["gemma4"] = {"num_hidden_layers": 6, "layer_types": ["sliding_attention", "full_attention"] * 3,
                           "num_kv_shared_layers": 2, "use_double_wide_mlp": True, "hidden_size_per_layer_input": 256,
                           "head_dim": 256, "global_head_dim": 512, "num_attention_heads": 2,
                           "num_key_value_heads": 1, "sliding_window": 8, "final_logit_softcapping": 30.0,
                           "eos_token_id": [1, 7], "tie_word_embeddings": True}
# Qwen3.5: three gated delta-net layers then one full-attention layer (the released pattern); 2 key heads
# shared by 4 value heads (llama.cpp reorders the value heads), value width 4 x 64 = 256 (k-quant rows);
# key and value heads of one size, as llama.cpp's qwen35 requires (and the released models have). rms_norm_eps
# 1e-6 as released: llama.cpp l2-normalizes the delta-net's q/k with it, transformers with a fixed 1e-6. Weights
# of range 0.03: with 0.1 the random delta rule is chaotic (rounding its weights to bf16 moves transformers' own
# logits by 0.34 std), with 0.03 by 0.05, so the harness's F16/BF16/Q8_0 tolerances still mean something
_QWEN35 = {"num_hidden_layers": 4, "head_dim": 32, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
           "linear_key_head_dim": 64, "linear_value_head_dim": 64, "linear_conv_kernel_dim": 4,
           "layer_types": ["linear_attention"] * 3 + ["full_attention"], "rms_norm_eps": 1e-6,
           "initializer_range": 0.03}
ARCH_DEFAULTS["qwen35"] = _QWEN35
ARCH_DEFAULTS["qwen35moe"] = {**_QWEN35, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                              "shared_expert_intermediate_size": 64}
ARCH_DEFAULTS["qwen3next"] = ARCH_DEFAULTS["qwen35moe"]  # the same hybrid pattern, q/k/v/z fused per key head
DEFAULT_TOKENIZER.update({"qwen35": "bpe:qwen35", "qwen35moe": "bpe:qwen35", "qwen3next": "bpe:qwen2"})
# LFM2-MoE: one dense lead layer, then conv/attention layers with 4 experts (top 2) and the router's bias
ARCH_DEFAULTS["lfm2moe"] = {"num_hidden_layers": 4, "layer_types": ["conv", "conv", "full_attention", "conv"],
                            "num_dense_layers": 1, "num_experts": 4, "num_experts_per_tok": 2,
                            "moe_intermediate_size": 64, "use_expert_bias": True, "norm_eps": 1e-5}
DEFAULT_TOKENIZER["lfm2moe"] = "bpe:llama3"
# Granite 4 hybrid (H-tiny style): Mamba-2 layers around one attention layer (config.json in the Hub's legacy
# names, as llama.cpp's converter reads them), 4 experts + shared MLP, no rope, Granite's multipliers;
# "granitehybrid_dense" is H-micro's form (no experts: the shared MLP is the feed-forward)
MODEL_CLASSES["granitehybrid"] = ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM")
MODEL_CLASSES["granitehybrid_dense"] = MODEL_CLASSES["granitehybrid"]
DEFAULT_TOKENIZER.update({"granitehybrid": "bpe:starcoder", "granitehybrid_dense": "bpe:starcoder"})
ARCH_DEFAULTS["granitehybrid"] = {**ARCH_DEFAULTS["granite"], "num_hidden_layers": 4,
                                  "layer_types": ["mamba", "mamba", "attention", "mamba"], "num_local_experts": 4,
                                  "num_experts_per_tok": 2, "intermediate_size": 64, "shared_intermediate_size": 128,
                                  "mamba_n_heads": 4, "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_d_head": "auto",
                                  "mamba_d_conv": 4, "mamba_expand": 2, "position_embedding_type": "nope",
                                  "initializer_range": 0.05}
ARCH_DEFAULTS["granitehybrid_dense"] = {**ARCH_DEFAULTS["granitehybrid"], "num_local_experts": 0,
                                        "num_experts_per_tok": 0}
# Falcon-H1: attention and Mamba-2 side by side in every layer, with its µP multipliers (not 1, so a missed one
# shows in the logits) and the mixer's gated norm (gate first, as released)
MODEL_CLASSES["falconh1"] = ("FalconH1Config", "FalconH1ForCausalLM")
DEFAULT_TOKENIZER["falconh1"] = "bpe:llama3"
ARCH_DEFAULTS["falconh1"] = {"num_hidden_layers": 2, "head_dim": 16, "mamba_d_ssm": 128, "mamba_n_heads": 4,
                             "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_d_conv": 4,
                             "mamba_expand": 2, "mamba_rms_norm": True, "mamba_norm_before_gate": False,
                             "initializer_range": 0.05,
                             "lm_head_multiplier": 0.5, "embedding_multiplier": 2.0, "mlp_multipliers": [0.9, 1.1],
                             "key_multiplier": 0.8, "attention_out_multiplier": 0.7, "attention_in_multiplier": 1.2,
                             "ssm_multipliers": [1.1, 0.9, 1.2, 0.8, 1.3], "ssm_in_multiplier": 0.9,
                             "ssm_out_multiplier": 1.1}
# Nemotron-H (dense): Mamba-2, squared-ReLU MLP and attention blocks, config.json as the Hub ships it
# (hybrid_override_pattern "M-*-", no MoE keys: transformers 5 would save its MoE defaults)
MODEL_CLASSES["nemotronh"] = ("NemotronHConfig", "NemotronHForCausalLM")
DEFAULT_TOKENIZER["nemotronh"] = "bpe:llama3"
ARCH_DEFAULTS["nemotronh"] = {"layers_block_type": ["mamba", "mlp", "attention", "mlp"], "num_hidden_layers": 4,
                              "head_dim": 16, "mamba_num_heads": 4, "mamba_head_dim": 32, "n_groups": 2,
                              "ssm_state_size": 16, "conv_kernel": 4, "expand": 2, "layer_norm_epsilon": 1e-5,
                              "initializer_range": 0.05}
# Nemotron 3 Nano's layout: Mamba-2, MoE (E) and attention blocks, sigmoid router with correction bias, one shared
# expert, routed_scaling_factor 2.5 as released (128 experts top-6 there; 4 top-2 here)
MODEL_CLASSES["nemotronhmoe"] = MODEL_CLASSES["nemotronh"]
DEFAULT_TOKENIZER["nemotronhmoe"] = "bpe:llama3"
ARCH_DEFAULTS["nemotronhmoe"] = {**ARCH_DEFAULTS["nemotronh"],
                                 "layers_block_type": ["mamba", "moe", "attention", "moe"], "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                                 "moe_shared_expert_intermediate_size": 96, "routed_scaling_factor": 2.5,
                                 "norm_topk_prob": True, "n_group": 1, "topk_group": 1}
# MoE reach (issue 18): 4 experts, top-2, each family's real options (k-quant tests pass 256-row experts)
MODEL_CLASSES.update({"qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
                      "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
                      "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM"),
                      "ernie45moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM"),
                      "phimoe": ("PhimoeConfig", "PhimoeForCausalLM"), "gptoss": ("GptOssConfig", "GptOssForCausalLM")})
DEFAULT_TOKENIZER.update({"qwen2moe": "bpe:qwen2", "olmoe": "bpe:dbrx", "granitemoe": "bpe:starcoder",
                          "ernie45moe": "spm", "phimoe": "spm", "gptoss": "bpe:harmony"})
ARCH_DEFAULTS["qwen2moe"] = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                             "shared_expert_intermediate_size": 96, "norm_topk_prob": False}
ARCH_DEFAULTS["olmoe"] = {"num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64,
                          "num_key_value_heads": 4}  # as released (llama.cpp's olmoe has no GQA)
ARCH_DEFAULTS["granitemoe"] = {**ARCH_DEFAULTS["granite"], "num_local_experts": 4, "num_experts_per_tok": 2,
                               "intermediate_size": 64}
MODEL_CLASSES["granitemoeshared"] = ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM")
DEFAULT_TOKENIZER["granitemoeshared"] = "bpe:starcoder"
ARCH_DEFAULTS["granitemoeshared"] = {**ARCH_DEFAULTS["granitemoe"], "shared_intermediate_size": 96}
# ERNIE 4.5 MoE: layer 0 dense (moe_layer_start_index 1), two shared experts, expert-score correction bias
ARCH_DEFAULTS["ernie45moe"] = {"num_hidden_layers": 3, "moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 64,
                               "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_layer_end_index": 2}
# Phi-3.5-MoE: LayerNorm (with biases), attention and lm_head biases
ARCH_DEFAULTS["phimoe"] = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64,
                           "attention_bias": True, "lm_head_bias": True, "max_position_embeddings": 1024,
                           "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                                               "long_factor": [1.0 + i / 4 for i in range(8)],
                                               "short_factor": [1.0 + i / 16 for i in range(8)],
                                               "original_max_position_embeddings": 256,
                                               "short_mscale": 1.243, "long_mscale": 1.243}}
# gpt-oss: sliding/full layers alternating (window 8 < the harness's 25 tokens), head_dim x heads != hidden,
# YaRN as released; eos <|return|>, <|endoftext|>, <|call|> (ids 1002, 1001, 1008 after the trained 1000);
# weights of std 0.05 (the release's init is 0.02): at 0.1 its (up + 1) x GLU experts make the random model so
# chaotic that BF16 rounding alone moves the k-quant-width model's logits by 2 std
ARCH_DEFAULTS["gptoss"] = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64, "head_dim": 32,
                           "initializer_range": 0.05,
                           "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                           "eos_token_id": [1002, 1001, 1008]}

# Reach (issue 18), dense families and the small classics. OLMo 3: layers 0-2 slide over 8 tokens, layer 3 is
# global with Olmo-3 Think's YaRN (x8 over 32 positions)
MODEL_CLASSES.update({"olmo3": ("Olmo3Config", "Olmo3ForCausalLM"),
                      "ministral3": ("Ministral3Config", "Ministral3ForCausalLM"),
                      "mistral3_mm": ("Mistral3Config", "Mistral3ForConditionalGeneration"),  # CONFIG_WRAPPERS
                      "exaone4": ("Exaone4Config", "Exaone4ForCausalLM"),
                      "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM"),
                      "stablelm": ("StableLmConfig", "StableLmForCausalLM"),
                      "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM"),
                      "phi": ("PhiConfig", "PhiForCausalLM"),
                      "gptneox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
                      "gpt2": ("GPT2Config", "GPT2LMHeadModel")})
ARCH_DEFAULTS["olmo3"] = {"num_hidden_layers": 4, "sliding_window": 8, "rope_parameters": {
    "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
    "full_attention": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "beta_fast": 32.0,
                       "beta_slow": 1.0, "original_max_position_embeddings": 32, "attention_factor": 1.2079441541679836}}}
# Ministral 3: its YaRN (mscale / mscale_all_dim) and Llama 4 query temperature with a period of 16 positions
ARCH_DEFAULTS["ministral3"] = {"head_dim": 32, "rope_parameters": {
    "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": 16,
    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}}
ARCH_DEFAULTS["mistral3_mm"] = ARCH_DEFAULTS["ministral3"]
# EXAONE 4 as the 1.2B ships: no window (every layer ropes), per-head q/k norms (tokenizer: GPT-2's split,
# which llama.cpp's "exaone4" uses); ERNIE 4.5 0.3B: SentencePiece, head_dim != hidden/heads
ARCH_DEFAULTS["exaone4"] = {"sliding_window": None, "layer_types": ["full_attention"] * 2}
ARCH_DEFAULTS["ernie4_5"] = {"head_dim": 32, "use_bias": False}
# The LayerNorm classics, each with its released options: StableLM 2 (qkv biases, 25% rotary, Qwen-like
# split: llama.cpp "qwen2"), StarCoder 2 (biases, window > the samples), Phi-2 (partial rotary, output bias),
# Pythia (25% rotary, parallel residual), GPT-2 (its own key names; the common ones are aliases)
ARCH_DEFAULTS["stablelm"] = {"use_qkv_bias": True, "partial_rotary_factor": 0.25, "layer_norm_eps": 1e-5}
ARCH_DEFAULTS["starcoder2"] = {"use_bias": True, "sliding_window": 128, "norm_epsilon": 1e-5}
# Phi-2 ropes 0.4 x 80 = 32 dims per head; 0.375 keeps that partial, even count at the tiny head sizes 16 and 64
ARCH_DEFAULTS["phi"] = {"partial_rotary_factor": 0.375, "num_key_value_heads": 4, "layer_norm_eps": 1e-5}
ARCH_DEFAULTS["gptneox"] = {"rotary_pct": 0.25, "use_parallel_residual": True, "layer_norm_eps": 1e-5,
                            "num_key_value_heads": None}
ARCH_DEFAULTS["gpt2"] = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": 128,
                         "num_key_value_heads": None}
DEFAULT_TOKENIZER.update({"olmo3": "bpe:dbrx", "ministral3": "bpe:tekken", "mistral3_mm": "bpe:tekken",
                          "exaone4": "bpe:gpt2", "ernie4_5": "spm", "stablelm": "bpe:qwen2",
                          "starcoder2": "bpe:starcoder", "phi": "bpe:gpt2", "gptneox": "bpe:gpt2", "gpt2": "bpe:gpt2"})


def _gemma3_multimodal(cfg: dict) -> dict:
    """Gemma3Config: the text config inside, a 1-layer 32x32-pixel SigLIP tower, 4 image tokens."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return dict(text_config={k: v for k, v in cfg.items() if k != "tie_word_embeddings"}, vision_config=vision,
                mm_tokens_per_image=4, tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                eos_token_id=cfg.get("eos_token_id"), initializer_range=cfg.get("initializer_range", 0.02))


# arch -> function from the flat config keys to the config class's arguments (multimodal wrappers)
CONFIG_WRAPPERS = {"gemma3_mm": _gemma3_multimodal}
CONFIG_WRAPPERS["gemma3n"] = lambda cfg: {"vocab_size_per_layer_input": cfg["vocab_size"], **cfg}  # PLE rows
CONFIG_WRAPPERS["gemma4"] = CONFIG_WRAPPERS["gemma3n"]


def _qk_norm_scale(model) -> None:
    """Gemma 3n / 4 attend with scale 1 over RMS-normed q and k: trained q_norm/k_norm weights keep the scores
    O(1). Random ones (~1) give scores of std ~sqrt(head_dim), a near-hard attention that flips under a 1e-3
    change of any weight; scaled by head_dim^-1/4 each, the tiny models stay comparable across types."""
    for name, p in model.named_parameters():
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            p.mul_(p.shape[0] ** -0.25)


# arch -> function applied to the random-init model (in place, under no_grad) before it is saved
POST_INIT = {"gemma3n": _qk_norm_scale, "gemma4": _qk_norm_scale, "gemma4_mm": _qk_norm_scale}


def _correction_bias(model) -> None:
    """Nemotron 3's router correction bias is a buffer (zero at init, not randomized with the parameters)."""
    import torch

    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.add_(torch.randn_like(b) * 0.2)


POST_INIT["nemotronhmoe"] = _correction_bias


def _gemma4_multimodal(cfg: dict) -> dict:
    """Gemma4Config: the text config inside, a 1-layer vision tower (8-pixel patches), no audio tower."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, patch_size=8, position_embedding_size=64)
    text = {"vocab_size_per_layer_input": cfg["vocab_size"], **cfg}
    return dict(text_config=text, vision_config=vision, audio_config=None,
                tie_word_embeddings=cfg.get("tie_word_embeddings", True), eos_token_id=cfg.get("eos_token_id"))


MODEL_CLASSES["gemma4_mm"] = ("Gemma4Config", "Gemma4ForConditionalGeneration")  # text config wrapped
DEFAULT_TOKENIZER["gemma4_mm"] = "spm:gemma4"
ARCH_DEFAULTS["gemma4_mm"] = ARCH_DEFAULTS["gemma4"]
CONFIG_WRAPPERS["gemma4_mm"] = _gemma4_multimodal


def _mistral3_multimodal(cfg: dict) -> dict:
    """Mistral3Config: a Ministral 3 text config inside, a 1-layer 32x32-pixel Pixtral tower."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                  image_size=32, patch_size=8)
    text = {"model_type": "ministral3", **{k: v for k, v in cfg.items() if k != "tie_word_embeddings"}}
    return dict(text_config=text, vision_config=vision, tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                spatial_merge_size=2, image_token_index=cfg["vocab_size"] - 1)


CONFIG_WRAPPERS["mistral3_mm"] = _mistral3_multimodal


def _idefics3_multimodal(cfg: dict) -> dict:
    """SmolVLMConfig / Idefics3Config: a Llama text config inside, a 1-layer 32x32-pixel SigLIP tower (8-pixel
    patches, pixel shuffle 2: 4 image tokens); pass ``image_token_id``, the tokenizer's <image> (1004 with
    bpe:smolvlm)."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    text = {"model_type": "llama", **{k: v for k, v in cfg.items() if k != "tie_word_embeddings"}}
    return dict(text_config=text, vision_config=vision, scale_factor=2, image_token_id=cfg["image_token_id"],
                tie_word_embeddings=cfg.get("tie_word_embeddings", False))


for _arch, _names in (("smolvlm", ("SmolVLMConfig", "SmolVLMForConditionalGeneration")),
                      ("idefics3", ("Idefics3Config", "Idefics3ForConditionalGeneration"))):
    MODEL_CLASSES[_arch], CONFIG_WRAPPERS[_arch], DEFAULT_TOKENIZER[_arch] = _names, _idefics3_multimodal, "bpe:smolvlm"


def _tokenizer(dir: Path, kind: str) -> tuple[int, dict]:
    """Train the tokenizer into ``dir``; returns (number of token ids, special ids for config.json)."""
    if kind == "spm:gemma":
        tokfactory.train_gemma_spm(dir, vocab_size=1000)
        return 1000, {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    if kind == "spm:gemma4":  # Gemma 4 ships tokenizer.json only (SentencePiece-style BPE), no tokenizer.model
        from transformers import AutoTokenizer

        tokfactory.train_gemma_spm(dir, vocab_size=1000)
        AutoTokenizer.from_pretrained(dir).save_pretrained(dir)
        (dir / "tokenizer.model").unlink()
        return 1000, {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    if kind == "spm":
        tokfactory.train_spm(dir, vocab_size=1000)
        added = json.loads((dir / "added_tokens.json").read_text()) if (dir / "added_tokens.json").exists() else {}
        n = 1000 + len(added)
        return n, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    scheme = kind.split(":", 1)[1] if ":" in kind else "llama3"
    tokfactory.train_bpe(dir, scheme=scheme, vocab_size=1000)
    tok = json.loads((dir / "tokenizer.json").read_text())
    ids = dict(tok["model"]["vocab"])
    ids.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    special = {f"{k}_token_id": ids.get(cfg.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
    return max(ids.values()) + 1, special


def _legacy_layer_types(path: Path, cfg: dict) -> None:
    """Granite 4's config.json as released: layer_types "mamba"/"attention" (transformers 5 saves its new
    names; llama.cpp's converter reads the old ones)."""
    saved = json.loads(path.read_text())
    if isinstance(cfg.get("layer_types"), list) and set(cfg["layer_types"]) <= {"mamba", "attention"}:
        saved["layer_types"] = list(cfg["layer_types"])
        path.write_text(json.dumps(saved, indent=2))


def _nemotronh_hub_config(path: Path, moe: bool = False) -> None:
    """Nemotron-H's config.json as released: the block pattern as a string, no mixture-of-experts keys (but for
    ``moe``: Nemotron 3, which keeps them and drops only the MTP ones)."""
    saved = json.loads(path.read_text())
    marks = {"linear_attention": "M", "full_attention": "*", "mlp": "-", "moe": "E"}
    saved["hybrid_override_pattern"] = "".join(marks[t] for t in saved.pop("layers_block_type"))
    if moe:
        saved.pop("mtp_layers_block_type", None)
        path.write_text(json.dumps(saved, indent=2))
        return
    for key in [k for k in saved if k.startswith(("moe_", "n_routed", "n_shared", "num_experts", "mtp_", "routed_",
                                                   "topk_", "norm_topk"))] + ["n_group"]:
        saved.pop(key, None)
    path.write_text(json.dumps(saved, indent=2))


def make_hf_model(dir: str | Path, arch: str = "llama", tokenizer: str | None = None, tied: bool = False,
                  dtype: str = "float32", kquant: bool = False, pad_vocab: int = 0, shard_size: str | None = None,
                  seed: int = 0, **config_overrides) -> Path:
    """Save a random-init ``arch`` model + tokenizer into ``dir`` (see module docstring); returns ``dir``."""
    import torch
    import transformers

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    n_tok, special = _tokenizer(dir, tokenizer or DEFAULT_TOKENIZER[arch])
    hidden, ff = (256, 512) if kquant else (64, 160 if arch == "phi3" else 128)
    cfg = dict(vocab_size=n_tok + pad_vocab, hidden_size=hidden, intermediate_size=ff, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=tied, initializer_range=0.1, rms_norm_eps=1e-5, **special)
    cfg.update(ARCH_DEFAULTS.get(arch, {}))
    cfg.update(config_overrides)
    config_cls, model_cls = (getattr(transformers, name) for name in MODEL_CLASSES[arch])
    torch.manual_seed(seed)
    if arch in CONFIG_WRAPPERS:
        cfg = CONFIG_WRAPPERS[arch](cfg)
    model = model_cls(config_cls(**cfg)).eval()
    with torch.no_grad():  # norms and biases are 1/0 at init: randomize so a mix-up shows in the logits
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("e_score_correction_bias"):  # ERNIE's [1, n_expert] bias too
                p.add_(torch.randn_like(p) * 0.2)
        if arch in POST_INIT:
            POST_INIT[arch](model)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(dir, **kwargs)
    if arch.startswith("granitehybrid"):  # layer_types as the Hub ships them
        _legacy_layer_types(dir / "config.json", cfg)
    if arch in ("nemotronh", "nemotronhmoe"):
        _nemotronh_hub_config(dir / "config.json", moe=arch == "nemotronhmoe")
    return dir


# A long-context Phi-3 (rope type "longrope" with per-frequency long/short factors; head_dim 16 -> 8 each)
PHI3_LONGROPE = dict(arch="phi3", max_position_embeddings=1024, rope_parameters={
    "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
    "long_factor": [1.0 + i / 4 for i in range(8)], "short_factor": [1.0 + i / 16 for i in range(8)],
    "original_max_position_embeddings": 256})

_CACHE: dict[str, Path] = {}
_CACHE_ROOT: Path | None = None


def cached_hf_model(**kwargs) -> Path:
    """:func:`make_hf_model` once per distinct ``kwargs`` per session; do not modify the folder."""
    global _CACHE_ROOT
    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _CACHE:
        if _CACHE_ROOT is None:
            _CACHE_ROOT = Path(tempfile.mkdtemp(prefix="slimedge-models-"))
            atexit.register(shutil.rmtree, _CACHE_ROOT, True)
        _CACHE[key] = make_hf_model(_CACHE_ROOT / f"m{len(_CACHE)}", **kwargs)
    return _CACHE[key]


def copy_model(src: Path, dst: Path) -> Path:
    """A private copy of a (cached) model folder, safe to damage."""
    shutil.copytree(src, dst)
    return Path(dst)
