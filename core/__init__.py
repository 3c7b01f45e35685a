"""The leaf package every other one builds on; it imports nothing from the project.

units (rates and frame sizes), arrays (type names of the arrays passed around), clock (the session's media
clock), items (what travels between the pipeline's stages), events (typed session events), audio (conversions and
resampling), extras (optional dependencies).
The layering above it is checked by tests/core/test_layering.py.
"""
