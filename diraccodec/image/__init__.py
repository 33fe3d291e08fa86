"""Image I/O: any image Pillow opens to the codec's 8-bit planes and back, and files written whole.

The package itself imports nothing: the Pillow plugin reads DRC_FORMAT from here, and `import
diraccodec` stays quick (no NumPy until the first image is read).
"""

DRC_FORMAT = "DRC"  # the Pillow plugin's name for .drc files, which the codec decodes, never encodes
