"""The base codec: the multi-rate hyperprior model (transforms plus entropy models) and its
bit-exact coding path from pixels to a range-coded latent stream and back."""
