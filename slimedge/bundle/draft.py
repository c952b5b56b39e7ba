"""Speculative decoding with a draft GGUF, through llama-cpp-python's draft-model hook.

``llama_cpp.Llama(draft_model=...)`` calls its draft with the tokens so far (prompt + output + the token
just sampled) and gets back tokens to try; the target evaluates them all in one batch, samples its own token
at every position and keeps the drafted ones up to the first that differs, so the output is the target's
(token for token under greedy decoding). llama-cpp-python ships only a prompt-lookup draft;
:class:`GGUFDraft` runs a small GGUF (same vocabulary) in its own llama.cpp context:

* its KV cache is kept across calls: each call evaluates only what differs from what the draft context
  already holds (the common prefix is kept, the rest removed), normally the accepted tokens and one more;
* it proposes up to ``k`` tokens greedily (argmax of the draft's logits), stopping at an end-of-generation
  token;
* ``k`` follows acceptance: the next call learns how many of its proposals the target kept (the new tokens
  after the proposal point); all kept -> ``k`` grows by half (at most ``k_max``), a miss after ``a`` kept ->
  ``k`` becomes ``a + 1`` (at least ``k_min``). A draft that keeps missing at ``k_min`` backs off: it sits
  out the next 1, 2, 4 ... (at most :data:`MAX_SKIP`) target steps (proposing nothing, so the target decodes
  alone at its normal cost), then tries again; a kept token ends the back-off.

:attr:`GGUFDraft.stats` counts calls, proposed/accepted tokens and the tokens the draft evaluated.
:func:`vocab_mismatch` says why a draft cannot serve a target (vocabulary size or a token's text).

Standard library, NumPy and llama-cpp-python only: ``slimedge build --draft`` copies this file into the
bundle and the launcher loads it from beside itself (as serve_guard.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from llama_cpp.llama_speculative import LlamaDraftModel

MAX_SKIP = 16  # most target steps a missing draft sits out before trying again


@dataclass
class DraftStats:
    calls: int = 0        # times the target asked for a draft
    proposed: int = 0     # tokens proposed (whose fate is known: the last call's are not counted yet)
    accepted: int = 0     # of those, kept by the target
    steps: int = 0        # target steps that verified a proposal (calls whose outcome is known)
    evaluated: int = 0    # tokens the draft context evaluated (prefix reuse keeps this low)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def accepted_per_step(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0


class GGUFDraft(LlamaDraftModel):
    """A draft model: ``path`` (a GGUF with the target's vocabulary) in its own llama.cpp context."""

    def __init__(self, path, *, n_ctx: int = 2048, n_threads: int | None = None, k: int = 4, k_max: int = 8,
                 k_min: int = 1, n_gpu_layers: int = 0, verbose: bool = False):
        import llama_cpp

        if not 1 <= k_min <= k_max:
            raise ValueError(f"draft sizes need 1 <= k_min ({k_min}) <= k_max ({k_max})")
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                   n_gpu_layers=n_gpu_layers, logits_all=False, verbose=verbose)
        self.k, self.k_min, self.k_max = max(k_min, min(k, k_max)), k_min, k_max
        self.stats = DraftStats()
        self._pending: tuple[np.ndarray, np.ndarray] | None = None  # (context, proposal) of the last call
        self._skip = self._backoff = 0  # steps left to sit out; the current back-off length
        self._n_vocab = self.llm.n_vocab()

    def close(self) -> None:
        self.llm.close()

    def _learn(self, ids: np.ndarray) -> None:
        """Count how many of the last proposal the target kept, and adapt ``k``."""
        if self._pending is None:
            return
        ctx, prop = self._pending
        self._pending = None
        n = len(ctx)
        if len(ids) <= n or not np.array_equal(ids[:n], ctx):  # another generation: outcome unknown
            return
        got = ids[n:n + len(prop)]
        same = got == prop[:len(got)]
        kept = len(got) if same.all() else int(np.argmin(same))
        if len(ids) > n + kept:  # decided: the target put its own token after the kept ones
            self.stats.proposed += len(prop)
            self.stats.accepted += kept
            self.stats.steps += 1
            full = kept == len(prop)
            if kept == 0 and len(prop) <= self.k_min:  # missing even at the smallest k: sit out a while
                self._backoff = min(MAX_SKIP, 2 * self._backoff or 1)
                self._skip = self._backoff
            elif kept:
                self._backoff = 0
            self.k = min(self.k_max, self.k + max(1, self.k // 2)) if full else max(self.k_min, kept + 1)

    def _sync(self, ids: np.ndarray) -> None:
        """Make the draft context hold ``ids`` with fresh logits for the last one, re-evaluating only the
        part after the common prefix with what it holds."""
        llm = self.llm
        held = llm.input_ids[:llm.n_tokens]
        m = min(len(held), len(ids))
        same = held[:m] == ids[:m]
        prefix = m if same.all() else int(np.argmin(same))
        prefix = min(prefix, len(ids) - 1)  # the last token is evaluated again for its logits
        llm.n_tokens = prefix  # eval() removes the cache from here on
        llm.eval(ids[prefix:].tolist())
        self.stats.evaluated += len(ids) - prefix

    def _argmax(self) -> int:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                    shape=(self._n_vocab,))))

    def __call__(self, input_ids, /, **kwargs) -> np.ndarray:
        import llama_cpp

        ids = np.asarray(input_ids, dtype=np.intc)
        self.stats.calls += 1
        self._learn(ids)
        if self._skip > 0:
            self._skip -= 1
            return np.array([], dtype=np.intc)
        k = min(self.k, self.llm.n_ctx() - len(ids))
        if k <= 0 or len(ids) == 0:
            return np.array([], dtype=np.intc)
        self._sync(ids)
        out: list[int] = []
        for j in range(k):
            tok = self._argmax()
            out.append(tok)
            if j == k - 1 or llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, tok):
                break
            self.llm.eval([tok])
            self.stats.evaluated += 1
        prop = np.array(out, dtype=np.intc)
        self._pending = (ids.copy(), prop)
        return prop


def vocab_mismatch(target, draft) -> str | None:
    """Why the draft ``llama_cpp.Llama`` cannot draft for the target one (None when it can): the vocabulary
    size, or the first token whose text differs."""
    n_t, n_d = target.n_vocab(), draft.n_vocab()
    if n_t != n_d:
        return f"vocabulary of {n_d} tokens, the target has {n_t}"
    tm, dm = target._model, draft._model
    for i in range(n_t):
        a, b = tm.token_get_text(i), dm.token_get_text(i)
        if a != b:
            return f"token {i} is {b!r}, the target's is {a!r}"
    return None
