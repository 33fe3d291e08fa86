"""The .drc container: header, tagged sections and checksum (docs/format.md)."""
