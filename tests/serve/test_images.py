"""Images over the OpenAI API: the image policy (bundle/vision_runtime.py), the guard's image_url checks, and a
served vision bundle answering image_url parts through llama-cpp-python's multimodal chat handler.

Hostile input is answered in one line (400 from the server): not an image, a huge image (refused from its header,
before any decoding), a path escaping the image folder (``..``, absolute, symlink), a local file without
``--image-dir``, a remote URL without ``--allow-remote-images``. Remote fetching is tested against a real local
HTTP server.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from tests.serve.serve_helpers import request
from tests.vision import vision_checks as vc

from slimedge.bundle import serve_guard as sg
from slimedge.bundle import vision_runtime as vr


def png_bytes(w: int = 32, h: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(vc.test_image(w, h)).save(buf, "PNG")
    return buf.getvalue()


def huge_png_header(w: int = 100_000, h: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR chunk claiming a w x h image (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat(url: str, text: str = "Describe it.") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]}], "max_tokens": 4,
            "temperature": 0}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    (d / "ok.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (d / "link.png").symlink_to(tmp_path / "secret.png")
    return d


def test_sniff_reads_the_formats_stb_decodes():
    from PIL import Image

    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(vc.test_image(40, 24)).save(buf, fmt)
        assert vr.sniff(buf.getvalue()) == (fmt.lower(), 40, 24), fmt
    assert vr.sniff(b"%PDF-1.7 not an image") is None and vr.sniff(b"") is None


def test_policy_data_urls_and_hostile_images():
    p = vr.ImagePolicy()
    assert p.load(data_url(png_bytes())) == png_bytes()
    cases = {data_url(b"just some text, no image"): "is not an image",
             data_url(huge_png_header()): "100000x100000 PNG, over the limit",
             "data:image/png;base64,@@@not-base64": "does not decode",
             "data:image/png,rawbytes": "not a base64 data URL",
             "ftp://example.org/a.png": "scheme 'ftp' is not taken"}
    for ref, why in cases.items():
        with pytest.raises(vr.ImageError, match=why) as exc:
            p.load(ref)
        assert "\n" not in str(exc.value)
    with pytest.raises(vr.ImageError, match="over the limit of 100 bytes"):
        vr.ImagePolicy(max_bytes=100).load(data_url(png_bytes()))


def test_policy_local_files_stay_in_their_folder(folder, tmp_path):
    with pytest.raises(vr.ImageError, match="start the server with --image-dir"):
        vr.ImagePolicy().load(str(folder / "ok.png"))
    p = vr.ImagePolicy(folder)
    assert p.load("ok.png") == p.load(str(folder / "ok.png")) == p.load((folder / "ok.png").as_uri()) == png_bytes()
    for ref in ("../secret.png", str(tmp_path / "secret.png"), "link.png", (tmp_path / "secret.png").as_uri()):
        with pytest.raises(vr.ImageError, match="outside the image folder"):
            p.load(ref)
    with pytest.raises(vr.ImageError, match="no such file"):
        p.load("missing.png")


@pytest.fixture
def http_images(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "ok.png").write_bytes(png_bytes())
    (www / "page.html").write_text("<html>not an image</html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_policy_remote_urls_only_when_allowed(http_images):
    with pytest.raises(vr.ImageError, match="--allow-remote-images"):
        vr.ImagePolicy().load(f"{http_images}/ok.png")
    p = vr.ImagePolicy(allow_remote=True)
    assert p.load(f"{http_images}/ok.png") == png_bytes()
    with pytest.raises(vr.ImageError, match="is not an image"):
        p.load(f"{http_images}/page.html")
    with pytest.raises(vr.ImageError, match="could not be fetched"):
        p.load(f"{http_images}/missing.png")
    with pytest.raises(vr.ImageError, match="over the limit of 50 bytes"):
        vr.ImagePolicy(allow_remote=True, max_bytes=50).load(f"{http_images}/ok.png")


def test_guard_checks_image_parts_and_hands_on_data_urls(folder):
    lim = sg.Limits()
    body = json.dumps(chat("ok.png")).encode()
    out = json.loads(sg.check_request(sg.CHAT, body, lim, images=vr.ImagePolicy(folder)))
    part = out["messages"][0]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": data_url(png_bytes())}}
    with pytest.raises(sg.Reject) as exc:  # a text model: image parts refused
        sg.check_request(sg.CHAT, body, lim)
    assert exc.value.status == 400 and "text model" in exc.value.message
    for ref, why in (("../secret.png", "outside the image folder"), (data_url(b"text"), "is not an image"),
                     ("https://example.org/cat.png", "does not fetch")):
        with pytest.raises(sg.Reject) as exc:
            sg.check_request(sg.CHAT, json.dumps(chat(ref)).encode(), lim, images=vr.ImagePolicy(folder))
        assert exc.value.status == 400 and why in exc.value.message
        assert exc.value.param == "messages[0].content[0].image_url"
    bad = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}
    with pytest.raises(sg.Reject, match="must be a text or image_url part"):
        sg.check_request(sg.CHAT, json.dumps(bad).encode(), lim, images=vr.ImagePolicy(folder))


@pytest.fixture(scope="module")
def vision_bundle(tmp_path_factory):
    from transformers import Gemma3ImageProcessorPil

    from slimedge.bundle import build_bundle

    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    src = vc.make_vlm(tmp_path_factory.mktemp("vis") / "gemma3-vlm", "gemma3_mm", ip,
                      "Gemma3ForConditionalGeneration", {"image_seq_length": 4})
    return build_bundle(src, "cpu", tmp_path_factory.mktemp("vis") / "bundle", type="Q8_0")


def test_serve_refuses_a_projector_of_another_model_and_images_without_one(vision_bundle, serve_bundle):
    from slimedge.bundle.serve import serve
    from slimedge.errors import SlimedgeError

    text_model = serve_bundle / "model.gguf"  # the shared tiny text model: another width
    with pytest.raises(SlimedgeError, match="wide embeddings but model.gguf") as exc:
        serve(text_model, mmproj=vision_bundle / "mmproj.gguf")
    assert "\n" not in str(exc.value)
    with pytest.raises(SlimedgeError, match="need a model with a vision projector"):
        serve(serve_bundle, image_dir=vision_bundle)
    with pytest.raises(SlimedgeError, match="serves its own vision projector"):
        serve(vision_bundle, mmproj=vision_bundle / "mmproj.gguf")


@pytest.mark.slow
def test_served_bundle_answers_image_urls_and_refuses_hostile_ones(vision_bundle, start_server, folder, tmp_path):
    """The bundle's own launcher (standalone copy of vision_runtime.py) serves image_url parts."""
    srv = start_server([sys.executable, str(vision_bundle / "run"), "--serve", "--threads", "2",
                        "--image-dir", str(folder)])
    status, body = request(srv.port, "/v1/chat/completions", chat(data_url(png_bytes())))
    assert status == 200, body
    with_image = body["usage"]["prompt_tokens"]
    status, body = request(srv.port, "/v1/chat/completions", chat("ok.png"))
    assert status == 200 and body["usage"]["prompt_tokens"] == with_image
    status, body = request(srv.port, "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "Describe it."}], "max_tokens": 4})
    assert status == 200 and body["usage"]["prompt_tokens"] + 4 <= with_image  # 4 image tokens (libmtmd's)
    for ref, why in (("../secret.png", "outside the image folder"), (data_url(b"plain text"), "is not an image"),
                     (data_url(huge_png_header()), "over the limit"), ("link.png", "outside the image folder"),
                     ("http://127.0.0.1:9/cat.png", "does not fetch")):
        status, body = request(srv.port, "/v1/chat/completions", chat(ref))
        assert status == 400, (ref, body)
        body = json.loads(body) if isinstance(body, str) else body
        msg = body["error"]["message"]
        assert why in msg and "\n" not in msg and body["error"]["param"] == "messages[0].content[0].image_url"
    assert srv.proc.poll() is None  # still serving


@pytest.mark.slow
def test_slimedge_serve_gguf_with_mmproj(vision_bundle, start_server, http_images):
    srv = start_server([sys.executable, "-m", "slimedge", "serve", str(vision_bundle / "model.gguf"), "--mmproj",
                        str(vision_bundle / "mmproj.gguf"), "--threads", "2", "--allow-remote-images"])
    status, body = request(srv.port, "/v1/chat/completions", chat(data_url(png_bytes())))
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant", body
    with_data_url = body["usage"]["prompt_tokens"]
    status, body = request(srv.port, "/v1/chat/completions", chat(f"{http_images}/ok.png"))  # fetched: allowed
    assert status == 200 and body["usage"]["prompt_tokens"] == with_data_url, body
    status, body = request(srv.port, "/v1/chat/completions", chat(f"{http_images}/page.html"))
    assert status == 400 and "is not an image" in json.loads(body)["error"]["message"]
    status, body = request(srv.port, "/v1/chat/completions", chat("/etc/hostname"))
    assert status == 400 and "start the server with --image-dir" in json.loads(body)["error"]["message"]


def test_run_refuses_image_without_projector(serve_bundle, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes())
    r = subprocess.run([sys.executable, str(serve_bundle / "run"), "--image", str(img), "hi"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "--image needs a bundle with a vision projector" in r.stderr
