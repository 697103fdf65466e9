"""vqvae_transformer.data"""
