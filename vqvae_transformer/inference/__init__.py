"""vqvae_transformer.inference"""
