"""Serving backends: the real vLLM server (default) and an opt-in simulated one (``factory``
picks one from the config), and the ``session`` an experiment body drives a started one through.

No imports here: importing a backend module runs this file first, so it must not import them back.
"""
