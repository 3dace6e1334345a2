"""Training-test fixtures live in tests/conftest.py (tiny_world, taught_checkpoint); helpers in stage_helpers.py."""
