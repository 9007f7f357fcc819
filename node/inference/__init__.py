"""Inference: load a layer range of a Hugging Face Llama-family checkpoint and run it with tinygrad."""
