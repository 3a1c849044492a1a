"""Simulations: a model server with real capacity limits (and, later, the attack simulator)."""
