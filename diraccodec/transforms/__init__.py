"""The base codec's transforms (pixels to latents and back), their layers and tiling, and the
encoder's search for cheaper latent symbols."""
