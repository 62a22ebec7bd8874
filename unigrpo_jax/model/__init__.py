"""The Bagel model in Flax: LLM (Mixture-of-Transformers), heads, ViT, autoencoder."""
