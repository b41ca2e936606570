"""Simulation before go-live (SPEC §2): in memory, driven by the real core rules."""
