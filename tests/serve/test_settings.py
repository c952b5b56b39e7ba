"""The profile's runtime settings as llama_cpp.server settings (no server started)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from llama_cpp.server.settings import ModelSettings

from slimedge.bundle import server_runtime as srv
from slimedge.errors import SlimedgeError
from slimedge.quant.types import CACHE_TYPES


def test_runtime_maps_to_model_settings():
    rt = {"n_ctx": 1024, "n_batch": 256, "n_ubatch": 128, "n_gpu_layers": -1, "cache_type_k": "q8_0",
          "cache_type_v": "q4_0", "flash_attn": True, "use_mmap": False, "use_mlock": False}
    kw = srv.server_model_settings(Path("m.gguf"), rt, alias="tiny", n_ctx=rt["n_ctx"], n_gpu_layers=-1,
                                   threads=3, has_template=True, verbose=False)
    ms = ModelSettings(**kw)  # the server's own validation accepts them
    assert (ms.n_ctx, ms.n_batch, ms.n_ubatch, ms.n_gpu_layers) == (1024, 256, 128, -1)
    assert (ms.type_k, ms.type_v) == (CACHE_TYPES["q8_0"], CACHE_TYPES["q4_0"])
    assert ms.flash_attn is True and ms.use_mmap is False and ms.n_threads == ms.n_threads_batch == 3
    assert ms.chat_format == "chat_template.default" and ms.model_alias == "tiny" and ms.logits_all is False
    no_tpl = srv.server_model_settings(Path("m.gguf"), {}, alias="t", n_ctx=256, n_gpu_layers=0, threads=None,
                                       has_template=False, verbose=False)
    assert no_tpl["chat_format"] is None and "n_threads" not in no_tpl and "type_k" not in no_tpl


def test_flash_attn_auto_and_swa_full_while_loading(monkeypatch):
    import llama_cpp.llama_cpp as lib

    enabled = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    with srv.flash_attn_setting({"flash_attn": None}):
        assert lib.LLAMA_FLASH_ATTN_TYPE_ENABLED == lib.LLAMA_FLASH_ATTN_TYPE_AUTO
    assert lib.LLAMA_FLASH_ATTN_TYPE_ENABLED == enabled
    seen = {}
    monkeypatch.setattr(llama_cpp, "Llama", lambda **kw: seen.update(kw))
    with srv.swa_full_setting({"swa_full": False}):
        llama_cpp.Llama(model_path="m.gguf")
    assert seen == {"model_path": "m.gguf", "swa_full": False}


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.1.2.3", True),
                                     ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("myhost", False)])
def test_loopback_rule(host, ok):
    assert srv.is_loopback(host) is ok
    if ok:
        srv.check_host(host, None)
    else:
        with pytest.raises(srv.ServeError, match="--api-key"):
            srv.check_host(host, None)
        srv.check_host(host, "key")


def test_slimedge_serve_refuses_before_reading(tmp_path):
    from slimedge.bundle.serve import serve

    with pytest.raises(SlimedgeError, match="not a loopback"):
        serve(tmp_path / "missing.gguf", host="0.0.0.0")
    with pytest.raises(SlimedgeError, match="not found"):
        serve(tmp_path / "missing.gguf")
