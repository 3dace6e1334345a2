"""Trainable projectors: encoder vectors -> LLM tokens (input) and signal-token states -> decoder conditioning (output).

from nextgpt.projectors import build_input_projector, build_output_projectors
input_projector = build_input_projector(cfg.model.input_projector, in_dim=1024, llm_dim=4096)
output_projectors = build_output_projectors(cfg.model.output_projectors, llm_dim=4096)
"""

from nextgpt.projectors.input_projector import (
    INPUT_PROJECTOR_TYPES,
    GroupProjector,
    InputProjector,
    LinearProjector,
    MLPProjector,
    build_input_projector,
)
from nextgpt.projectors.output_projector import OutputProjector, build_output_projectors

__all__ = [
    "INPUT_PROJECTOR_TYPES",
    "GroupProjector",
    "InputProjector",
    "LinearProjector",
    "MLPProjector",
    "OutputProjector",
    "build_input_projector",
    "build_output_projectors",
]
