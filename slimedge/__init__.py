"""slimedge — compile and package language models for edge devices.

Pipeline: load (``source``, ``arch``, ``vocab``) → distill (``distill``) → quantize/convert
(``quant``, ``writer``, ``convert``) → target/bundle (``targets``, ``bundle``) → bench (``bench``).

``import slimedge`` stays light: numpy-free, torch-free. Heavy modules load when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "SlimedgeError"]

from .errors import SlimedgeError  # noqa: E402
