"""Inference: the OpenAI-compatible /v1 routes, proxied to the model server."""
