"""Images for a bundle with a vision projector (mmproj): which images are taken, and the chat handler that runs them.

A bundle whose manifest has an ``mmproj`` entry carries this file beside its launcher (``run``), which loads it
from there; ``slimedge serve`` loads the same file from slimedge/bundle. Standard library and llama-cpp-python
only: it must not import slimedge.

* :class:`ImagePolicy` turns an image reference into checked bytes. Taken: ``data:image/...;base64,`` URLs;
  local files (``file://`` URLs or paths) only under the policy's folder (``--image-dir``; a path that
  resolves outside it, symlinks included, is refused); ``http(s)://`` URLs only when ``allow_remote``
  (``--allow-remote-images``), fetched with a timeout and a byte limit. Every image is sniffed from its
  header (PNG, JPEG, GIF, BMP, WebP: what llama.cpp's stb_image decodes) and refused, before any decoding,
  when it is not one of those or when it is larger than ``max_pixels`` (a tiny compressed file can decode to
  gigabytes). Each refusal is an :class:`ImageError` with one line naming the image and what to do.
* :func:`make_handler` is llama-cpp-python's generic multimodal chat handler (``MTMDChatHandler``: libmtmd
  with the GGUF's own chat template, the image parts replaced by libmtmd's media marker), changed in two
  things: it loads only the ``data:`` URLs that :meth:`ImagePolicy.inline` produced, so nothing reaches
  libmtmd unchecked (llama-cpp-python's own loader would fetch any URL); and a message's parts reach the
  template joined into one string (templates that only take string content work too). It first calls
  :func:`zero_fresh_allocations`, which works around a libmtmd bug that can make Pixtral's image rows NaN.
"""

from __future__ import annotations

import base64
import binascii
import struct
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

MAX_PIXELS = 4096 * 4096  # largest image taken (width x height): ~50 MB once decoded to RGB
MAX_IMAGE_BYTES = 20 << 20  # largest encoded image (file, download or data URL)
FETCH_TIMEOUT_S = 10
FORMATS = "PNG, JPEG, GIF, BMP or WebP"


class ImageError(ValueError):
    """An image that is not taken: one line naming it and what to do."""


def _short(ref: str) -> str:
    return ref if len(ref) <= 60 else ref[:40] + "..." + ref[-12:]


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: height, width
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    return None


def sniff(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from an image's header, or None when it is none of :data:`FORMATS`."""
    size = None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        fmt, size = "png", struct.unpack(">II", data[16:24])
    elif data[:3] == b"\xff\xd8\xff":
        fmt, size = "jpeg", _jpeg_size(data)
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        fmt, size = "gif", struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        fmt, size = "bmp", (abs(w), abs(h))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, size = "webp", _webp_size(data)
    else:
        return None
    return (fmt, int(size[0]), int(size[1])) if size and size[0] > 0 and size[1] > 0 else None


class ImagePolicy:
    """Which image references are taken, and their checked bytes (see the module docstring)."""

    def __init__(self, folder: str | Path | None = None, allow_remote: bool = False, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_IMAGE_BYTES):
        self.folder = Path(folder).resolve() if folder is not None else None
        self.allow_remote, self.max_pixels, self.max_bytes = allow_remote, max_pixels, max_bytes

    def check(self, data: bytes, ref: str) -> bytes:
        """``data`` when it is an image within the limits, else :class:`ImageError`."""
        got = sniff(data)
        if got is None:
            raise ImageError(f"image {_short(ref)!r} is not an image ({FORMATS} expected)")
        fmt, w, h = got
        if w * h > self.max_pixels:
            raise ImageError(f"image {_short(ref)!r} is {w}x{h} {fmt.upper()}, over the limit of {self.max_pixels} "
                             "pixels; send a smaller image")
        return data

    def read_file(self, path: str | Path, ref: str | None = None) -> bytes:
        """A local image, refused when it is missing or too large (the folder rule is :meth:`load`'s)."""
        p, ref = Path(path), ref or str(path)
        try:
            size = p.stat().st_size
            if not p.is_file():
                raise ImageError(f"image {_short(ref)!r} is not a file")
            if size > self.max_bytes:
                raise ImageError(f"image {_short(ref)!r} is {size} bytes, over the limit of {self.max_bytes}")
            return self.check(p.read_bytes(), ref)
        except OSError as exc:
            raise ImageError(f"image {_short(ref)!r} cannot be read ({exc.strerror or exc})") from None

    def _local(self, ref: str) -> bytes:
        if self.folder is None:
            raise ImageError(f"image {_short(ref)!r} is a local file, and this server takes none: send it as a "
                             "data URL, or start the server with --image-dir FOLDER")
        raw = unquote(urlparse(ref).path) if ref.startswith("file:") else ref
        p = Path(raw) if Path(raw).is_absolute() else self.folder / raw
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageError(f"image {_short(ref)!r}: no such file under the image folder") from None
        if real != self.folder and self.folder not in real.parents:
            raise ImageError(f"image {_short(ref)!r} is outside the image folder ({self.folder}); refused")
        return self.read_file(real, ref)

    def _remote(self, ref: str) -> bytes:
        if not self.allow_remote:
            raise ImageError(f"image {_short(ref)!r} is a remote URL, which this server does not fetch: send the "
                             "image as a data URL (or start the server with --allow-remote-images)")
        import urllib.request

        try:
            with urllib.request.urlopen(urllib.request.Request(ref, headers={"User-Agent": "slimedge"}),
                                        timeout=FETCH_TIMEOUT_S) as f:
                data = f.read(self.max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise ImageError(f"image {_short(ref)!r} could not be fetched ({exc})") from None
        if len(data) > self.max_bytes:
            raise ImageError(f"image {_short(ref)!r} is over the limit of {self.max_bytes} bytes")
        return self.check(data, ref)

    def load(self, ref) -> bytes:
        """The checked bytes of the image ``ref`` names (a data URL, a local file, a remote URL)."""
        if not isinstance(ref, str) or not ref:
            raise ImageError("an image_url must be a non-empty string (a data URL, or a file under the image folder)")
        if ref.startswith("data:"):
            head, sep, payload = ref.partition(",")
            if not sep or not head.endswith(";base64"):
                raise ImageError(f"image {_short(ref)!r} is not a base64 data URL (data:image/png;base64,...)")
            if len(payload) * 3 // 4 > self.max_bytes:
                raise ImageError(f"image {_short(ref)!r} is over the limit of {self.max_bytes} bytes")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ImageError(f"image {_short(ref)!r}: the data URL's base64 does not decode") from None
            return self.check(data, "data URL")
        scheme = urlparse(ref).scheme.lower()
        if scheme in ("http", "https"):
            return self._remote(ref)
        if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter parses as a scheme)
            return self._local(ref)
        raise ImageError(f"image {_short(ref)!r}: URL scheme {scheme!r} is not taken (data:, file or http(s))")

    def inline(self, ref) -> str:
        """The image ``ref`` names as a checked ``data:`` URL (what the chat handler loads)."""
        return data_url(self.load(ref))


def data_url(data: bytes) -> str:
    fmt = (sniff(data) or ("png",))[0]
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


M_PERTURB = -6  # glibc mallopt: allocated bytes start as ~value, freed bytes are set to value


def zero_fresh_allocations() -> bool:
    """Make glibc return malloc'd memory zero-filled (``mallopt(M_PERTURB, 0xFF)``), for the whole process.

    libmtmd's Pixtral graph (llama.cpp tools/mtmd/models/pixtral.cpp) makes the ``[IMG_BREAK]`` rows from a new,
    uninitialized graph tensor that it "clears" by scaling it by 0 before adding the break embedding. 0 x NaN is
    NaN, so when the compute buffer reuses freed heap memory that held NaN bit patterns (which depends on what the
    process did before), those rows come out NaN and the image prompt is garbage. With allocations zero-filled
    they are exact. The cost is a memset per heap allocation, which is small beside llama.cpp's compute. Returns
    whether it applied (glibc only; elsewhere large allocations come from fresh zeroed pages anyway)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_PERTURB, 0xFF) == 1


def make_handler(mmproj: str | Path, *, use_gpu: bool = False, verbose: bool = False):
    """llama-cpp-python's generic multimodal chat handler for ``mmproj``, loading only checked data URLs."""
    zero_fresh_allocations()
    import llama_cpp._logger as llama_log
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp.llama_chat_format import MTMDChatHandler

    for set_log in (mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set):  # libmtmd's log only when verbose, as llama.cpp's
        set_log(llama_log.llama_log_callback, None)

    class CheckedImages(MTMDChatHandler):
        def load_image(self, image_url: str) -> bytes:
            if not isinstance(image_url, str) or not image_url.startswith("data:"):
                raise ValueError("images reach the model as checked data URLs only")
            return ImagePolicy().load(image_url)

        @classmethod
        def _convert_message_for_template(cls, message, media_marker: str) -> dict:
            """Parts joined into one string (images as the media marker): every chat template takes a string."""
            m = super()._convert_message_for_template(message, media_marker)
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in m["content"])
            return m

    return CheckedImages(clip_model_path=str(mmproj), verbose=verbose, use_gpu=use_gpu)


def user_message(text: str, images) -> dict:
    """A chat message of ``images`` (data URLs) followed by ``text``."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in images]
            + [{"type": "text", "text": text}]}


def read_images(paths) -> list:
    """Local image files (``run --image``) as checked data URLs; :class:`ImageError` for the first bad one."""
    return [data_url(ImagePolicy().read_file(p)) for p in paths]


def attach(line: str, images: list) -> bool:
    """``run --chat``: a ``/image PATH`` line appends the image to ``images`` (a bad one is one line on stderr);
    False for any other line."""
    if not line.startswith("/image "):
        return False
    try:
        images.extend(read_images([line[len("/image "):].strip()]))
    except ImageError as exc:
        print(f"run: {exc}", file=sys.stderr)
    return True


def ask(llm, prompt: str, images: list, max_tokens: int, temperature: float) -> None:
    """``run --image``: one chat turn of ``images`` and ``prompt``; prints the answer, then its token counts."""
    r = llm.create_chat_completion(messages=[user_message(prompt, images)], max_tokens=max_tokens,
                                   temperature=temperature)
    print(r["choices"][0]["message"]["content"])
    u = r["usage"]
    print(f"[{u['completion_tokens']} tokens; prompt {u['prompt_tokens']} tokens with {len(images)} image(s)]",
          file=sys.stderr)
