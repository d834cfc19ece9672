"""Experiments E0–E6: each is a function of an EngineSession, its config block and an output dir."""
