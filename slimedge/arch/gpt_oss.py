"""gpt-oss (``GptOssForCausalLM``: gpt-oss-20b, gpt-oss-120b) → GGUF architecture ``gpt-oss``.

Attention with q/k/v/o biases, one learned **sink** logit per head (``self_attn.sinks`` → ``attn_sinks``),
sliding-window and full layers alternating (``layer_types``: sliding first, llama.cpp's pattern of 2,
``attention.sliding_window``), neox rope with YaRN; ``post_attention_layernorm`` is llama.cpp's
``attn_post_norm`` (the norm before the experts). Every layer is a mixture of experts **with biases**:
router ``mlp.router`` (weight and bias) → ``ffn_gate_inp``, experts ``ffn_{gate,up,down}_exps`` (weights
and per-expert biases), the expert size being ``intermediate_size``.

The experts are stored fused: ``mlp.experts.gate_up_proj`` with gate and up interleaved (gate = even
features, up = odd), ``mlp.experts.down_proj``, and their ``*_bias``. Two layouts arrive here:

* float (transformers' ``save_pretrained``, bf16 Hub copies): ``gate_up_proj`` [n_expert, n_embd, 2·n_ff]
  and ``down_proj`` [n_expert, n_ff, n_embd], i.e. transposed. :class:`~slimedge.arch.moe.ExpertColumns`
  reads them as llama.cpp's [n_expert, rows, cols] expert by expert (one expert's source matrix at a time,
  cached for the next slice), so memory stays near one expert;
* MXFP4 (the released checkpoints): the source (:mod:`slimedge.source.fp4src`) presents
  ``*_blocks``/``*_scales`` as one reference already in [n_expert, rows, cols]; gate and up are its even and
  odd rows (``rows(0, 2)``/``rows(1, 2)``) and pass through as MXFP4 when the mix keeps them so.

llama.cpp's gpt-oss graph differs from transformers in one point: its YaRN ramp always rounds the
correction range (transformers' ``truncate: true``); the released config says ``truncate: false``. Such a
config converts with a warning (outputs differ slightly, as with llama.cpp's own converter).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo, swa_pattern
from .base import KV, U32, Arch
from .moe import ExpertColumns, MoEArch

log = logging.getLogger(__name__)

T = MODEL_TENSOR
L = "model.layers.{bid}."
A, X = L + "self_attn.", L + "mlp.experts."
V = X + "[*]."  # the table's names of the split expert tensors


class GptOss(MoEArch, Arch):
    hf_names = ("GptOssForCausalLM",)
    gguf_arch = MODEL_ARCH.GPT_OSS
    TENSORS = [
        ("model.embed_tokens.weight", T.TOKEN_EMBD, True),
        (L + "input_layernorm.weight", T.ATTN_NORM, True),
        *[(A + f"{p}_proj.{s}", t, True) for p, t in (("q", T.ATTN_Q), ("k", T.ATTN_K), ("v", T.ATTN_V),
                                                       ("o", T.ATTN_OUT)) for s in ("weight", "bias")],
        (A + "sinks.weight", T.ATTN_SINKS, True),
        (L + "post_attention_layernorm.weight", T.ATTN_POST_NORM, True),
        (L + "mlp.router.weight", T.FFN_GATE_INP, True),
        (L + "mlp.router.bias", T.FFN_GATE_INP, True),
        *[(V + f"{p}.{s}", t, True) for p, t in (("gate", T.FFN_GATE_EXP), ("up", T.FFN_UP_EXP),
                                                  ("down", T.FFN_DOWN_EXP)) for s in ("weight", "bias")],
        ("model.norm.weight", T.OUTPUT_NORM, True),
        ("lm_head.weight", T.OUTPUT, True),  # unless tied: then a copy of the embedding
    ]
    ALIASES = [(A + "sinks", A + "sinks.weight")]
    N_EXPERT_KEYS = ("num_local_experts", "num_experts")
    N_USED_KEYS = ("num_experts_per_tok", "experts_per_token")  # the release states both
    N_FF_EXP_KEY = "intermediate_size"
    OUTPUT_REQUIRED = True

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        n = self.hp.n_layer
        want = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        types = config.get("layer_types") or want
        if list(types) != want:
            raise SlimedgeError(f"config.json: {hf_arch} with layer_types {types} is not supported: llama.cpp's "
                                f"gpt-oss alternates sliding and full attention, sliding first")
        glu = (float(config.get("swiglu_alpha", 1.702)), float(config.get("swiglu_limit", 7.0)))
        if glu != (1.702, 7.0):
            raise SlimedgeError(f"config.json: {hf_arch} with swiglu_alpha {glu[0]} and swiglu_limit {glu[1]} is not "
                                f"supported: llama.cpp's gpt-oss experts use 1.702 and 7.0")
        self.window = int(config.get("sliding_window") or 0)
        if self.window <= 0:
            raise SlimedgeError(f"config.json: {hf_arch} needs sliding_window (found "
                                f"{config.get('sliding_window')!r}); fix config.json")
        if str(self.hp.rope.get("rope_type", "")).lower() == "yarn" and self.hp.rope.get("truncate") is False:
            log.warning("config.json: rope truncate=false (as released): llama.cpp's YaRN always rounds the "
                        "correction range, so outputs differ slightly from transformers' (as with llama.cpp's "
                        "own converter)")

    def expected_shape(self, tensor, is_bias):
        hp = self.hp
        if tensor == T.ATTN_SINKS:
            return (hp.n_head,)
        if tensor == T.ATTN_POST_NORM:
            return (hp.n_embd,)
        if is_bias and tensor in (T.FFN_GATE_EXP, T.FFN_UP_EXP):
            return (self.n_expert, self.n_ff_exp)
        if is_bias and tensor == T.FFN_DOWN_EXP:
            return (self.n_expert, hp.n_embd)
        if is_bias and tensor == T.FFN_GATE_INP:
            return (self.n_expert,)
        return super().expected_shape(tensor, is_bias)

    def tensors(self, source):
        refs = dict(source.tensors)
        for bid in range(self.hp.n_layer):
            x, v = X.format(bid=bid), V.format(bid=bid)
            for stem in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
                if x + stem not in refs:
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {x + stem} (expert weights of layer "
                                        f"{bid}), which {self.hf_arch} needs; the checkpoint is incomplete")
            gu, down = refs.pop(x + "gate_up_proj"), refs.pop(x + "down_proj")
            if getattr(gu, "stored_type", None) is not None:  # quantized source: [n_expert, rows, cols] already
                refs[v + "gate.weight"], refs[v + "up.weight"] = gu.rows(0, 2), gu.rows(1, 2)
                refs[v + "down.weight"] = down
            else:  # float: transposed, gate/up interleaved along the last axis
                refs[v + "gate.weight"] = ExpertColumns(x + "gate_up_proj", gu, 0, 2)
                refs[v + "up.weight"] = ExpertColumns(x + "gate_up_proj", gu, 1, 2)
                refs[v + "down.weight"] = ExpertColumns(x + "down_proj", down, 0, 1)
            gub = refs.pop(x + "gate_up_proj_bias")
            refs[v + "gate.bias"] = ExpertColumns(x + "gate_up_proj_bias", gub, 0, 2)
            refs[v + "up.bias"] = ExpertColumns(x + "gate_up_proj_bias", gub, 1, 2)
            refs[v + "down.bias"] = refs.pop(x + "down_proj_bias")
        return super().tensors(SimpleNamespace(model_dir=source.model_dir, tensors=refs))

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        info.n_swa, info.swa_layers = self.window, swa_pattern(2, self.hp.n_layer)
        return info

    def metadata(self) -> list[KV]:
        k = self.key
        return super().metadata() + [KV(k(Keys.Attention.SLIDING_WINDOW), self.window, U32),
                                     KV(k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), self.n_ff_exp, U32)]
