"""``slimedge serve MODEL.gguf|BUNDLE [--port P] [--host H] [--api-key K]``: an OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address needs --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option("--api-key", envvar="SLIMEDGE_API_KEY", default=None,
              help="Require this Bearer token on every request (default: $SLIMEDGE_API_KEY).")
@click.option("--target", default=None, metavar="NAME|PATH",
              help="For a GGUF: the target profile whose runtime settings to use (default: cpu). "
                   "A bundle uses its own.")
@click.option("-c", "--ctx", "n_ctx", type=click.IntRange(min=16), default=None, help="Context (default: the profile's).")
@click.option("-ngl", "--n-gpu-layers", "ngl", type=int, default=None, help="Layers on the GPU (default: the profile's).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: the profile's).")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Most tokens one request may generate (larger max_tokens: HTTP 400); a chat without "
                   "max_tokens gets this.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=4 << 20, show_default=True,
              help="Largest request body (larger: HTTP 413).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight (generating or queued) before more get HTTP 429.")
@click.option("--mmproj", type=click.Path(path_type=Path), default=None, metavar="MMPROJ.gguf",
              help="For a GGUF: its vision projector; chat messages may then carry image_url parts. A bundle "
                   "serves its own.")
@click.option("--image-dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Images may also be local files under DIR (file:// URLs or paths); default: data URLs only.")
@click.option("--allow-remote-images", is_flag=True, help="Fetch http(s) image URLs (refused by default).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's and uvicorn's logs.")
def cli(model: Path, host: str, port: int, api_key: str | None, target: str | None, n_ctx: int | None,
        ngl: int | None, threads: int | None, max_tokens_limit: int, max_body_bytes: int, max_concurrent: int,
        mmproj: Path | None, image_dir: Path | None, allow_remote_images: bool, verbose: bool) -> None:
    """Serve a GGUF or bundle over an OpenAI-compatible HTTP API (llama-cpp-python's server).

    MODEL is a GGUF or a bundle folder. Endpoints: /v1/models, /v1/completions, /v1/chat/completions (the GGUF's chat template),
    /v1/embeddings, streaming with "stream": true; with a vision projector, OpenAI image_url content parts. Runtime settings (context, batch, threads, GPU
    layers, KV cache types, flash attention) are the bundle's target profile's. A bundle's own
    `./run --serve` runs the same server without slimedge installed. Stop it with Ctrl-C or SIGTERM.

    \b
    Examples:
      slimedge serve tinyllama-cpu                     # http://127.0.0.1:8080/v1
      slimedge serve model.gguf --target laptop-gpu --port 9000
      SLIMEDGE_API_KEY=secret slimedge serve tinyllama-cpu --host 0.0.0.0
      slimedge serve gemma3-q4km.gguf --mmproj mmproj-gemma3-F16.gguf --image-dir ./photos
    """
    from ..bundle.serve import serve

    serve(model, host=host, port=port, api_key=api_key, target=target, n_ctx=n_ctx, n_gpu_layers=ngl,
          threads=threads, verbose=verbose, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
          max_concurrent=max_concurrent, mmproj=mmproj, image_dir=image_dir, allow_remote_images=allow_remote_images)
