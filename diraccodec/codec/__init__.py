"""The base codec: the multi-rate hyperprior model (transforms plus entropy models) and the
codec of one set of its weights, pixels to a range-coded latent stream and back."""
