"""Type stub of the C extension ``slimedge._kernels`` (built from kernels/; optional).

Type ids are GGML's (``gguf.GGMLQuantizationType``). Buffers are any C-contiguous objects with
the buffer protocol (NumPy arrays, bytes, bytearray, memoryview): float data must be float32 (or
raw bytes), quantized data bytes; another dtype raises TypeError, a read-only dst BufferError.
Both calls release the GIL.
"""

from collections.abc import Buffer

def quantize(qtype: int, src: Buffer, dst: Buffer, n_rows: int, n_per_row: int,
             imatrix: Buffer | None = None) -> None:
    """Quantize ``n_rows * n_per_row`` float32 values from ``src`` into the writable ``dst``
    (``n_rows * row_bytes`` bytes). ValueError on size mismatch or unsupported type;
    NotImplementedError when ``imatrix`` is given for a type without importance support."""

def dequantize(qtype: int, src: Buffer, dst: Buffer, n: int) -> None:
    """Dequantize ``n`` values (a multiple of the block size) from ``src`` into float32 ``dst``."""

def block_size(qtype: int, /) -> int:
    """Weights per block; 0 when the type is not supported."""

def type_size(qtype: int, /) -> int:
    """Bytes per block; 0 when the type is not supported."""

def has_imatrix(qtype: int, /) -> bool:
    """Whether ``quantize`` accepts importance weights for this type."""

def supported_types() -> tuple[int, ...]:
    """GGML type ids the kernels handle."""

def isa() -> str:
    """Instruction set the multi-versioned kernels run with: ``"avx2"`` or ``"baseline"``."""


def repack_fp4(codes: Buffer, scales: Buffer, dst: Buffer, n_sub: int, g: int, mask: int, row_blocks: int = 0,
               step: int = 1, /) -> None:
    """FP4 checkpoint codes (groups of ``g`` bytes, element 2i low nibble) and their scale bytes -> GGML blocks:
    per block ``n_sub`` scales ``& mask`` then the ``n_sub`` groups reordered (byte j: element j low, j + g high).
    With ``row_blocks``: the input is rows of that many blocks, of which every ``step``-th (from the first) is
    repacked into ``dst``."""
