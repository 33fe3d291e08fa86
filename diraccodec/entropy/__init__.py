"""Entropy coding: the latents' probability models, their integer tables, the range coder with escapes,
and the small coder of the detail map."""
