"""The ViT / SigLIP encoder rows every SigLIP-style tower shares, declared once.

``siglip_rows(prefix)`` gives the table rows (no ``.weight``/``.bias`` suffix; see ``base.py``) of a SigLIP
vision transformer whose tensors live under ``prefix`` (e.g. ``"vision_tower.vision_model."``): patch and
position embeddings, per block the two LayerNorms, q/k/v/out projections and the fc1/fc2 MLP, then the
post-LayerNorm. GGUF names follow ``gguf``'s V_* constants (``v.patch_embd``, ``v.blk.N.attn_q``, ...), as
llama.cpp's tensor map gives them to SigLIP checkpoints (fc1 -> ffn_up, fc2 -> ffn_down).
"""

from __future__ import annotations

from gguf import MODEL_TENSOR as T


def siglip_rows(prefix: str, post_norm: bool = True) -> list[tuple[str, T, bool]]:
    """SigLIP encoder rows under ``prefix``; ``post_norm``: the tower ends with ``post_layernorm``."""
    b = prefix + "encoder.layers.{bid}."
    rows = [
        (prefix + "embeddings.patch_embedding", T.V_ENC_EMBD_PATCH, True),
        (prefix + "embeddings.position_embedding", T.V_ENC_EMBD_POS, True),
        (b + "self_attn.k_proj", T.V_ENC_ATTN_K, True),
        (b + "layer_norm1", T.V_ENC_INPUT_NORM, True),
        (b + "layer_norm2", T.V_ENC_POST_ATTN_NORM, True),
        (b + "mlp.fc1", T.V_ENC_FFN_UP, True),
        (b + "mlp.fc2", T.V_ENC_FFN_DOWN, True),
        (b + "self_attn.out_proj", T.V_ENC_ATTN_O, True),
        (b + "self_attn.q_proj", T.V_ENC_ATTN_Q, True),
        (b + "self_attn.v_proj", T.V_ENC_ATTN_V, True),
    ]
    if post_norm:
        rows.append((prefix + "post_layernorm", T.V_POST_NORM, True))
    return rows


def siglip_aliases(*towers: str, canonical: str) -> list[tuple[str, str]]:
    """Prefix aliases mapping each tower spelling (``model.vision_tower.``, ``vision_tower.vision_model.``,
    ``vision_tower.`` as transformers 5 saves it, ...) to ``canonical``; longer spellings first."""
    return [(t, canonical) for t in sorted(towers, key=len, reverse=True)]
