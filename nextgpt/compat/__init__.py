"""Converters from the original NExT-GPT releases' weight files to the project's checkpoint folders.

`legacy` reads the released `7b_tiva_v0/pytorch_model.pt`; `new_codebase` reads what the NEW code's stage scripts save
(`mm_input_projector.bin`, `mm_output_projector.bin`, `non_lora_trainables.bin` + LoRA adapter); `writer` writes the
folder that `predict.py`, the demo and `merge_lora_weights.py` take.
"""
