"""Entropy coding: the latents' probability models, their integer tables, the range coder with escapes,
the latent stream (entropy parameters computed alike on every device, then range-coded), and the
small coder of the detail map."""
