"""Explain one layer's computation step by step on concrete numbers."""
