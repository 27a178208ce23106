"""Sandbox backends: one policy, compiled per backend. Platform modules import lazily."""
