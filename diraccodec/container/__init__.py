"""The .drc container: header, tagged sections and checksum (docs/format.md).

The package itself imports nothing: the Pillow plugin tells .drc data by MAGIC from here, and
`import diraccodec` stays quick (no NumPy until the first file is read).
"""

MAGIC = b"\x89DRC"  # the first bytes of every .drc file
