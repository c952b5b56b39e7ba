"""Copy a GGUF file with changed metadata (gguf-py's reader and writer), to make test inputs llama.cpp allows.

``edit_gguf(src, dst, set={key: (value, vtype, sub_type)}, drop={key, ...})`` rewrites every other key
and every tensor unchanged (tensor bytes as stored, so any type works); returns ``dst``.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def edit_gguf(src: Path, dst: Path, set: dict | None = None, drop: set | frozenset = frozenset()) -> Path:
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    changes = dict(set or {})
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment") or key in drop:
            continue
        if key in changes:
            w.add_key_value(key, *changes.pop(key))
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), main, sub)
    for key, args in changes.items():  # keys that were not there before
        w.add_key_value(key, *args)
    for t in reader.tensors:
        data = np.asarray(t.data)  # numpy order; bytes per row for a quantized type (gguf-py's byte shape)
        w.add_tensor(t.name, data, raw_shape=list(data.shape), raw_dtype=gguf.GGMLQuantizationType(t.tensor_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
