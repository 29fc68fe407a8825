"""The ITACLIP engine: pure torch + numpy, no napari or Qt.

One module per stage (see docs/architecture.md); `segmenter.ITACLIP` composes them.
"""
