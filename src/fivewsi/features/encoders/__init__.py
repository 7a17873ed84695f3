"""Patch encoder implementations; importing a module registers its encoders."""
