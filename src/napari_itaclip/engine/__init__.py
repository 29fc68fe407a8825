"""The ITACLIP engine: pure torch + numpy, no napari or Qt.

One module per stage (see docs/architecture.md); `segmenter.ITACLIP` composes them.
"""

from .triton_guard import install_triton_guard

# Before any engine module imports torch (which may import triton): see triton_guard.
install_triton_guard()
