"""Image I/O: any image Pillow opens to the codec's 8-bit planes and back, and files written whole."""
