"""Convert what the NEW NExT-GPT code (Oct 2024 rewrite) saves between its stages into a project checkpoint.

Its scripts write (spec §2.4), each a `torch.save` state dict:

    pretrain_enc/mm_input_projector.bin     model.mm_input_projector.*  (+ model.embed_tokens.weight, lm_head.weight)
    pretrain_dec/mm_output_projector.bin    model.mm_output_{img,vid,aud}_projector.*  (+ the same matrices)
    finetune/adapter_config.json + adapter_model.{bin,safetensors}   peft LoRA
    finetune/non_lora_trainables.bin        every other trainable tensor, prefixed `base_model.model.`

Loaded as that code loads them: the stage-3 folder's `non_lora_trainables.bin` wins; without it the adapters
restore only the last (added) rows of `embed_tokens`, the output adapter last, and the LM head keeps its added rows at
the mean of the base rows (the NEW code never restored them). Module names carry over unchanged (`GroupProjector`,
`TransformersProjector` = `in_fc`, `tfm`, `out_fc`, `query_embs`). The result runs with `vicuna_v1`, `<image_00>`
tokens and the NEW code's 2n-1-token signal spans (`model.signal_tokens.span_separator: " "`).

    converted = convert_new_codebase(NewCodebaseFiles(input_adapter=..., output_adapter=..., finetune_dir=...), cfg)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nextgpt.compat.legacy import projector_config, read_state_file, split_vocab_rows
from nextgpt.compat.writer import ConvertedCheckpoint
from nextgpt.config import Config, InputProjectorConfig, OutputProjectorsConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.llm.hf_weights import read_hf_tensor

OUTPUT_MODULES = {
    Modality.IMAGE: "model.mm_output_img_projector.",
    Modality.VIDEO: "model.mm_output_vid_projector.",
    Modality.AUDIO: "model.mm_output_aud_projector.",
}
INPUT_MODULE = "model.mm_input_projector."
EMBED_KEY, HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"
NON_LORA_FILE = "non_lora_trainables.bin"


@dataclass
class NewCodebaseFiles:
    """The files a NEW-code run left behind; any may be missing, but the three projectors must be found somewhere."""

    input_adapter: Path | None = None
    """`mm_input_projector.bin` of stage 1 (`pretrain_enc_*`)."""
    output_adapter: Path | None = None
    """`mm_output_projector.bin` of stage 2 (`pretrain_dec_*`)."""
    finetune_dir: Path | None = None
    """Stage-3 folder: `adapter_config.json`, `adapter_model.*`, `non_lora_trainables.bin`."""


def _load(path: Path) -> dict[str, torch.Tensor]:
    return read_state_file(path, "pass the file the NEW NExT-GPT scripts saved")


def normalize_non_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`base_model.model.model.x` -> `model.x` and `base_model.model.lm_head` -> `lm_head`, as the NEW loader does."""
    state = {(k[len("base_model.") :] if k.startswith("base_model.") else k): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in state.items()}
    return state


def _read_lora(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return {}, {}
    adapter_cfg = json.loads(config_path.read_text())
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
    else:
        weights = _load(folder / "adapter_model.bin")
    # peft files drop the adapter name; older peft versions kept ".default" in saved keys.
    weights = {k.replace(".default.weight", ".weight"): v for k, v in weights.items()}
    return weights, adapter_cfg


def group_projector_config(tensors: dict[str, torch.Tensor], base: InputProjectorConfig) -> InputProjectorConfig:
    """The grouping projector's sizes read from its tensors (heads and MLP ratio are not in the weights)."""
    stages = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("layers.")})
    depths = tuple(len({k.split(".")[3] for k in tensors if k.startswith(f"layers.{i}.blocks.")}) for i in stages)
    tokens = tuple(tensors[f"layers.{i}.group_token"].shape[1] for i in stages if f"layers.{i}.group_token" in tensors)
    return dataclasses.replace(
        base, type="group", group_width=tensors["in_fc.weight"].shape[0], group_num_tokens=tokens, group_depths=depths
    )


def _input_projector_config(tensors: dict[str, torch.Tensor], base: InputProjectorConfig) -> InputProjectorConfig:
    if "in_fc.weight" in tensors:
        return group_projector_config(tensors, base)
    if "layer.0.weight" in tensors:
        return dataclasses.replace(base, type="mlp", mlp_hidden_dim=tensors["layer.0.weight"].shape[0])
    return dataclasses.replace(base, type="linear")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def convert_new_codebase(files: NewCodebaseFiles, cfg: Config) -> ConvertedCheckpoint:
    """Map the NEW code's saved adapters onto the project's names and derive the config that fits them.

    Args:
        files: which files to read.
        cfg: the base config: component paths (Vicuna v1.5, ImageBind, decoders), signal-token counts, heads.

    Returns:
        The converted checkpoint (stage 3 when a LoRA adapter is present, else the latest stage given).

    Raises:
        FileNotFoundError: a named file is missing.
        ValueError: a projector is found nowhere, or leftover keys (named).
    """
    sources = []  # later sources win, in the NEW code's load order
    if files.input_adapter is not None:
        sources.append(("input adapter", _load(files.input_adapter)))
    if files.output_adapter is not None:
        sources.append(("output adapter", _load(files.output_adapter)))
    lora: dict[str, torch.Tensor] = {}
    adapter_cfg: dict = {}
    non_lora: dict[str, torch.Tensor] = {}
    if files.finetune_dir is not None:
        folder = Path(files.finetune_dir)
        lora, adapter_cfg = _read_lora(folder)
        if (folder / NON_LORA_FILE).is_file():
            non_lora = normalize_non_lora(_load(folder / NON_LORA_FILE))
    trainable: dict[str, torch.Tensor] = {}

    def find(prefix: str, what: str) -> dict[str, torch.Tensor]:
        for _, state in [("non_lora_trainables", non_lora), *reversed(sources)]:
            found = _strip(state, prefix)
            if found:
                return found
        raise ValueError(f"no {prefix}* tensors ({what}) in the given files; pass the adapter that holds it")

    # 1. Projectors.
    input_tensors = find(INPUT_MODULE, "input projector")
    input_cfg = _input_projector_config(input_tensors, cfg.model.input_projector)
    trainable.update({f"input_projector.{k}": v for k, v in input_tensors.items()})
    projector_cfgs = {}
    for modality in MODALITIES:
        tensors = find(OUTPUT_MODULES[modality], f"{modality.value} output projector")
        heads = getattr(cfg.model.output_projectors, modality.value).num_heads
        projector_cfgs[modality.value] = projector_config(tensors, heads)
        trainable.update({f"output_projectors.{modality.value}.{k}": v for k, v in tensors.items()})
    # 2. Vocabulary rows, as the NEW code restores them.
    signals = dataclasses.replace(cfg.model.signal_tokens, style="nextgpt", span_separator=" ")
    num_added = signals.num_image + signals.num_video + signals.num_audio
    trainable.update(_vocab_rows(non_lora, sources, num_added, cfg))
    # 3. Every key must belong to a known part (a part given twice is taken from the later file, as the NEW code
    #    loads them); anything else is reported.
    known = (INPUT_MODULE, *OUTPUT_MODULES.values())
    leftovers = [
        f"{name}:{k}"
        for name, state in [("non_lora_trainables", non_lora), *sources]
        for k in state
        if not k.startswith(known) and k not in (EMBED_KEY, HEAD_KEY)
    ]
    if leftovers:
        raise ValueError(f"{len(leftovers)} tensors no part consumes, e.g. {leftovers[:3]}")
    lora_cfg = dataclasses.replace(cfg.model.lora, enabled=False)
    if lora:
        lora_cfg = dataclasses.replace(
            cfg.model.lora,
            enabled=True,
            r=int(adapter_cfg["r"]),
            alpha=int(adapter_cfg["lora_alpha"]),
            dropout=float(adapter_cfg.get("lora_dropout", 0.0)),
            target_modules=tuple(sorted(adapter_cfg["target_modules"])),
        )
    model_cfg = dataclasses.replace(
        cfg.model,
        llm=dataclasses.replace(cfg.model.llm, template="vicuna_v1"),
        signal_tokens=signals,
        input_projector=input_cfg,
        output_projectors=OutputProjectorsConfig(**projector_cfgs),
        lora=lora_cfg,
    )
    stage = 3 if lora else (2 if files.output_adapter else 1)
    out_cfg = dataclasses.replace(cfg, model=model_cfg, train=dataclasses.replace(cfg.train, stage=stage))
    meta = {"converted_from": {k: str(v) for k, v in dataclasses.asdict(files).items() if v}, "format": "nextgpt-new"}
    return ConvertedCheckpoint(out_cfg, trainable, lora, meta)


def _vocab_rows(
    non_lora: dict[str, torch.Tensor],
    sources: list[tuple[str, dict[str, torch.Tensor]]],
    num_added: int,
    cfg: Config,
) -> dict[str, torch.Tensor]:
    """embed_tokens / lm_head rows: whole matrices from non_lora_trainables, else the adapters' added embedding rows
    (the output adapter's win) and the LM head's added rows at the base mean, as the NEW loader leaves them."""
    rows: dict[str, torch.Tensor] = {}
    llm_path = cfg.model.llm.model_path
    for key, name in ((EMBED_KEY, "llm.model.embed_tokens"), (HEAD_KEY, "llm.lm_head")):
        if key in non_lora:
            rows.update(split_vocab_rows(non_lora[key], non_lora[key].shape[0] - num_added, name))
            continue
        adapter = next((state[key] for _, state in reversed(sources) if key in state), None)
        if adapter is not None and key == EMBED_KEY:
            rows[f"{name}.new_rows"] = adapter[-num_added:].clone()
            continue
        if llm_path is None:
            raise ValueError(f"set model.llm.model_path: the {name} added rows start at the mean of its base rows")
        base = read_hf_tensor(Path(llm_path), key)  # (V_base, D)
        rows[f"{name}.new_rows"] = base.float().mean(dim=0, keepdim=True).to(base.dtype).expand(num_added, -1).clone()
    return rows
