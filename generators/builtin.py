"""Imports the built-in generator families so that they register (:data:`generators.registry.GENERATORS`)."""

from generators import diffusion, flow  # noqa: F401
