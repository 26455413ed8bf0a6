"""The test double of Apple's python_coreml_stable_diffusion package (only torch2coreml is doubled)."""
