"""Quantization: the format registry, the backend switch, the llama.cpp mixes and the per-tensor plan.

Public entry points::

    from slimedge.quant import quantize, dequantize, get_format
    q = quantize(w, "Q4_K")            # float32[rows, cols] -> uint8[rows, row_bytes]
    w2 = dequantize(q, "Q4_K", cols)    # -> float32[rows, cols]

``quantize``/``dequantize`` use the active backend (C kernels when built, else NumPy);
``SLIMEDGE_PUREPYTHON=1`` forces NumPy.

Modules: :mod:`.types` (every per-type fact, from the gguf package: block and byte sizes, type and
file-type ids, float and KV-cache types), :mod:`.formats` (the registry and the float formats),
:mod:`.legacy` and :mod:`.kquants` (+ :mod:`.kquant_search`, :mod:`.kquant_pack`, :mod:`.kquant_imatrix`)
the NumPy reference of each family, :mod:`.backend` (C or NumPy), :mod:`.mixes` (llama-quantize's choice
of a type per tensor).

Adding a new GGML tensor type (one gguf and ggml already define) touches exactly three places:

1. **Its registry class** here: ``class IQ4_NL(QuantFormat, qtype=T.IQ4_NL)`` with vectorized
   ``quantize_blocks`` / ``dequantize_blocks``, in its family's module (a new module goes into the
   import list below, which registers it). Block and byte sizes come from :mod:`.types`.
2. **Its kernel** in ``kernels/``: ``se_quantize_<t>``, ``se_dequantize_<t>`` and, for a quantized
   type, ``se_quantize_<t>_imatrix`` (importance weights), with its ``se_block_<t>`` layout struct,
   plus **one line** in the ``SE_TYPES`` table of ``kernels/slimedge_kernels.h``: the dispatch table,
   the type enum, the prototypes and the binding's ``supported_types()`` are all generated from it.
3. **Its test**: the byte-exactness tests against ggml (NumPy and C), the round-trip error test and the
   registry/kernel/gguf agreement test in ``tests/quant/`` take their type lists from the registry, so
   the new type is checked there without editing them; add a test for its own edge cases (and its
   error limit in test_roundtrip.py if it is coarser than llama.cpp's default).

Nothing else needs editing: the writer, the GGUF reader, the memory estimate, bundles, bench, target
validation and the mixes' size math read sizes and names from :mod:`.types` / gguf, and a type can
then be chosen per tensor (``--tensor-type``, ``--output-tensor-type``). Only a new *mix* (a llama file
type such as ``Q4_K_M``) is a line in :mod:`.mixes` (``_MIX_BASE``), plus its rules there; and
``slimedge.memory.REPACK_TYPES`` names the types llama.cpp's CPU backend repacks at load time (a fact
of llama.cpp's, not of the type: it changes when llama.cpp adds a repack, not when slimedge adds a type).
"""

from __future__ import annotations

from .formats import REGISTRY, QuantFormat, dequantize_rows, get_format, qtype_of, quantize_rows

# importing the format modules registers them
from . import legacy as _legacy  # noqa: F401,E402
from . import kquants as _kquants  # noqa: F401,E402
from . import iquants as _iquants  # noqa: F401,E402
from . import iquants_iq1 as _iquants_iq1  # noqa: F401,E402
from . import iq4 as _iq4  # noqa: F401,E402
from . import ternary as _ternary  # noqa: F401,E402
from . import fp4 as _fp4  # noqa: F401,E402
from . import q1q2 as _q1q2  # noqa: F401,E402
from . import nvfp4 as _nvfp4  # noqa: F401,E402
from .backend import backend_name, dequantize, quantize  # noqa: E402

__all__ = ["REGISTRY", "QuantFormat", "get_format", "qtype_of", "quantize", "dequantize",
           "quantize_rows", "dequantize_rows", "backend_name"]
