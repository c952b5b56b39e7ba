"""The format registry holds one class per GGML type, refuses a second, and checks what a format returns.

Like gguf-py's own registry (``gguf.quants``), a type registers once: a later class for the same type is a
bug (it would silently replace the first), so defining it raises. Abstract bases shared by several formats
(the grid i-quants' driver) take no ``qtype`` and are not registered. ``quantize_rows`` / ``dequantize_rows``
check the array a format's block functions return (dtype and shape), so a wrong format fails where it is,
not as garbage bytes in a file.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from slimedge.quant import REGISTRY, QuantFormat, dequantize_rows, quantize_rows
from slimedge.quant import iquants
from slimedge.quant.types import block_size, row_bytes, row_length, tensor_nbytes, type_size

SPARE = T.Q8_1  # a GGML type no slimedge format implements: free for the throw-away formats below


@pytest.fixture
def spare():
    assert SPARE not in REGISTRY
    yield SPARE
    REGISTRY.pop(SPARE, None)


def test_a_second_registration_of_a_type_is_refused():
    first = REGISTRY[T.Q4_K]
    with pytest.raises(TypeError, match=r"Q4_K is registered twice: by slimedge\.quant\.kquants\.Q4_K and by "
                                        r"tests\.quant\.test_registry\..*Again"):
        class Again(QuantFormat, qtype=T.Q4_K):
            pass
    assert REGISTRY[T.Q4_K] is first


def test_the_grid_iquants_register_their_own_classes_not_the_shared_driver():
    assert REGISTRY[T.IQ2_XXS] is iquants.IQ2_XXS
    assert iquants._GridQuant not in REGISTRY.values()
    for qt, cls in REGISTRY.items():
        assert cls.qtype == qt and cls.__name__ == qt.name, (qt, cls)


def test_an_abstract_base_is_not_registered_and_its_subclass_is(spare):
    n = len(REGISTRY)

    class Base(QuantFormat):
        pass

    assert len(REGISTRY) == n

    class Concrete(Base, qtype=spare):
        pass

    assert REGISTRY[spare] is Concrete and Concrete.block_size == block_size(spare)


@pytest.mark.parametrize("wrong", ["dtype", "shape", "not an array"])
def test_quantize_checks_the_shape_and_dtype_a_format_returns(spare, wrong):
    nb, ts = 4, type_size(spare)

    class Bad(QuantFormat, qtype=spare):
        @classmethod
        def quantize_blocks(cls, x, w=None):
            if wrong == "dtype":
                return np.zeros((x.shape[0], ts), np.int8)
            if wrong == "shape":
                return np.zeros((x.shape[0], ts - 1), np.uint8)
            return [0] * ts

        @classmethod
        def dequantize_blocks(cls, q):
            return np.zeros((q.shape[0], cls.block_size), np.float64 if wrong == "dtype" else np.float32)

    x = np.ones((2, nb * block_size(spare) // 2), np.float32)
    with pytest.raises(TypeError, match=r"Bad\.quantize_blocks returned .*, expected uint8\[4, 40\]"):
        quantize_rows(x, spare.name)
    q = np.zeros((2, row_bytes(spare, x.shape[1])), np.uint8)
    if wrong == "dtype":
        with pytest.raises(TypeError, match=r"Bad\.dequantize_blocks returned float64\[4, 32\], expected float32"):
            dequantize_rows(q, spare.name)
    else:
        assert dequantize_rows(q, spare.name).shape == x.shape


def test_byte_arithmetic_is_one_set_of_functions():
    """row_bytes / row_length / tensor_nbytes agree with each other and with gguf's block table."""
    from gguf import GGML_QUANT_SIZES

    from slimedge.errors import SlimedgeError

    for qt, (bs, ts) in GGML_QUANT_SIZES.items():
        n = 4 * bs
        assert row_bytes(qt, n) == 4 * ts and row_length(qt, row_bytes(qt, n)) == n
        assert tensor_nbytes((3, 2, n), qt) == 6 * row_bytes(qt, n)
        if qt in REGISTRY:
            assert REGISTRY[qt].row_bytes(n) == row_bytes(qt, n)
    with pytest.raises(SlimedgeError, match="row length 100 is not a multiple of the Q4_K block size 256"):
        tensor_nbytes((2, 100), T.Q4_K)
