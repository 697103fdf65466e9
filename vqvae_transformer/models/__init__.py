"""vqvae_transformer.models"""
