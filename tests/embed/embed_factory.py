"""Tiny random-init embedding models saved as sentence-transformers folders, for the embedding tests.

``make_embedder(dir, family, pooling="mean", normalize=True)`` saves a transformers model (random weights,
norms and biases randomized so a mix-up shows), its locally trained tokenizer (``tests.tokfactory``), and
the sentence-transformers files: ``modules.json``, ``1_Pooling/config.json`` and, with ``normalize``, a
``Normalize`` module, after ``dense`` Dense modules (EmbeddingGemma's projection).
``SentenceTransformer(dir)`` loads the result. ``cached_embedder(**same)`` builds each distinct folder once
per test session.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from tests import tokfactory

SENTENCES = (
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Größe, Straße, naïve café — résumé.",
    "numbers 12,50 and 3.14159 in 2026",
    "Привет, мир! Это тестовая строка.",
    "你好，世界！这是一个句子。",
)

_POOL_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
               "lasttoken": "pooling_mode_lasttoken"}


def _bert(dir: Path) -> None:
    import transformers

    tokfactory.train_wordpiece(dir, vocab_size=1000)
    n_vocab = len(json.loads((dir / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = transformers.BertConfig(vocab_size=n_vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                                  initializer_range=0.1, pad_token_id=0)
    _save(transformers.BertModel(cfg, add_pooling_layer=True), dir)


def _qwen3(dir: Path) -> None:
    """Qwen3-Embedding's shape: a bare Qwen3Model; the tokenizer appends <|endoftext|> (its post-processor)."""
    import transformers

    n_vocab, special = _bpe_appending_eos(dir)
    cfg = transformers.Qwen3Config(vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, initializer_range=0.1, rms_norm_eps=1e-6,
                                   tie_word_embeddings=True, **special)
    _save(transformers.Qwen3Model(cfg), dir)


def _bpe_appending_eos(dir: Path, eos: str = "<|endoftext|>") -> tuple[int, dict]:
    tokfactory.train_bpe(dir, scheme="qwen2", vocab_size=1000)
    tj = json.loads((dir / "tokenizer.json").read_text())
    ids = {**tj["model"]["vocab"], **{t["content"]: t["id"] for t in tj["added_tokens"]}}
    tj["post_processor"] = {"type": "Sequence", "processors": [
        tj["post_processor"],
        {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                                  {"SpecialToken": {"id": eos, "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                  {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": eos, "type_id": 1}}],
         "special_tokens": {eos: {"id": eos, "ids": [ids[eos]], "tokens": [eos]}}}]}
    (dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    cfg.pop("add_eos_token", None)
    cfg.update(eos_token=eos, pad_token=eos, padding_side="left")
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    return max(ids.values()) + 1, {"eos_token_id": ids[eos], "pad_token_id": ids[eos], "bos_token_id": None}


def _gemma(dir: Path) -> None:
    """EmbeddingGemma's shape: a bidirectional Gemma3TextModel (query_pre_attn_scalar != head_dim, so the
    scale folding is exercised); the Gemma SentencePiece tokenizer (bos prepended)."""
    import transformers

    tokfactory.train_gemma_spm(dir, vocab_size=1000)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=32,
        max_position_embeddings=256, sliding_window=512, layer_types=["sliding_attention", "sliding_attention",
                                                                      "full_attention"],
        use_bidirectional_attention=True, initializer_range=0.1, rms_norm_eps=1e-6, pad_token_id=0,
        bos_token_id=2, eos_token_id=1, rope_local_base_freq=10000.0)
    _save(transformers.Gemma3TextModel(cfg), dir)


def _modernbert(dir: Path) -> None:
    """ModernBERT's shape: no biases, GeGLU, alternating global/local layers (window 8, shorter than most test
    sentences, so the sliding is exercised); a byte-level BPE framed as [CLS] … [SEP]."""
    import transformers

    n_vocab, special = _bpe_framed(dir)
    cfg = transformers.ModernBertConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=2, initializer_range=0.1,
        global_rope_theta=160000.0, local_rope_theta=10000.0, **special)
    _save(transformers.ModernBertModel(cfg), dir)


def _bpe_framed(dir: Path) -> tuple[int, dict]:
    from tokenizers import AddedToken, Tokenizer, processors

    tokfactory.train_bpe(dir, scheme="gpt2", vocab_size=1000)
    tok = Tokenizer.from_file(str(dir / "tokenizer.json"))
    names = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    ids = {t: tok.token_to_id(t) for t in names}
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
                                      special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])])
    tok.save(str(dir / "tokenizer.json"))
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    for key in ("add_bos_token", "add_eos_token", "chat_template"):
        cfg.pop(key, None)
    cfg.update(bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
               unk_token="[UNK]", mask_token="[MASK]")
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    (dir / "special_tokens_map.json").unlink(missing_ok=True)
    return tok.get_vocab_size(), {"pad_token_id": ids["[PAD]"], "bos_token_id": ids["[CLS]"],
                                  "eos_token_id": ids["[SEP]"], "cls_token_id": ids["[CLS]"],
                                  "sep_token_id": ids["[SEP]"]}


def _xlmroberta(dir: Path) -> None:
    """bge-m3's shape: XLMRobertaModel (positions offset by pad_token_id + 1) with a unigram tokenizer."""
    import transformers

    n_vocab = tokfactory.train_xlmr_unigram(dir, vocab_size=1000)
    cfg = transformers.XLMRobertaConfig(vocab_size=n_vocab, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=130,
                                        type_vocab_size=1, initializer_range=0.1, pad_token_id=1, bos_token_id=0,
                                        eos_token_id=2)
    _save(transformers.XLMRobertaModel(cfg, add_pooling_layer=True), dir)


def _nomicbert(dir: Path) -> None:
    """nomic-embed-text's shape in transformers' own layout: rope, SwiGLU, post-norm, WordPiece tokenizer."""
    import transformers

    tokfactory.train_wordpiece(dir, vocab_size=1000)
    n_vocab = len(json.loads((dir / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = transformers.NomicBertConfig(vocab_size=n_vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=96, max_position_embeddings=128, type_vocab_size=2,
                                       initializer_range=0.1, pad_token_id=0, layer_norm_eps=1e-12)
    _save(transformers.NomicBertModel(cfg), dir)


FAMILIES = {"bert": _bert, "qwen3": _qwen3, "gemma": _gemma, "modernbert": _modernbert, "xlmroberta": _xlmroberta,
            "nomicbert": _nomicbert}


def _save(model, dir: Path) -> None:
    import torch

    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.eval().save_pretrained(dir)


def _dense_module(folder: Path, n_in: int, n_out: int, seed: int) -> None:
    """A sentence-transformers Dense module (no bias, identity activation, as EmbeddingGemma's) saved its way."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    torch.manual_seed(100 + seed)
    folder.mkdir(parents=True)
    Dense(n_in, n_out, bias=False, activation_function=torch.nn.Identity()).save(str(folder))


def _write_st(dir: Path, dim: int, pooling: str, normalize: bool, dense: tuple[int, ...] = ()) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    pool = {"word_embedding_dimension": dim, **{flag: kind == pooling for kind, flag in _POOL_FLAGS.items()},
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "include_prompt": True}
    (dir / "1_Pooling").mkdir()
    (dir / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    for i, (n_in, n_out) in enumerate(zip((dim, *dense), dense)):
        folder = f"{len(modules)}_Dense"
        _dense_module(dir / folder, n_in, n_out, seed=i)
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder,
                        "type": "sentence_transformers.models.Dense"})
    if normalize:
        folder = f"{len(modules)}_Normalize"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder,
                        "type": "sentence_transformers.models.Normalize"})
        (dir / folder).mkdir()
    (dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))


def make_embedder(dir: str | Path, family: str = "bert", pooling: str = "mean", normalize: bool = True,
                  dense: tuple[int, ...] = (), seed: int = 0) -> Path:
    """``dense``: the output widths of Dense modules after the pooling (e.g. (128, 64))."""
    import torch

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    FAMILIES[family](dir)
    dim = json.loads((dir / "config.json").read_text())["hidden_size"]
    _write_st(dir, dim, pooling, normalize, tuple(dense))
    return dir


_CACHE: dict[str, Path] = {}
_ROOT: list[Path] = []


def cached_embedder(**kwargs) -> Path:
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _CACHE:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="slimedge-embed-")))
            atexit.register(shutil.rmtree, _ROOT[0], True)
        _CACHE[key] = make_embedder(_ROOT[0] / f"e{len(_CACHE)}", **kwargs)
    return _CACHE[key]
