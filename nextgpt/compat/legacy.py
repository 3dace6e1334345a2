"""Convert the legacy NExT-GPT release (`7b_tiva_v0/pytorch_model.pt`) into a project checkpoint, key by key.

The legacy file is one `torch.save` of every trainable tensor of its `NextGPTModel` (fp16), with these keys:

    llama_proj.{weight,bias}                                   input projector, Linear 1024 -> 4096 (1 token per item)
    gen_text_hidden_fcs{,_video,_audio}.0.fc.{weight,bias}     output projectors (image, video, audio): Linear 4096->512
    gen_text_hidden_fcs….0.tfm.{encoder,decoder}.…             nn.Transformer(512, 4 heads, 4+4 layers, norm_first)
    gen_text_hidden_fcs….0.model.{weight,bias}                 Linear 512 -> 768 / 1024 / 512
    gen_text_hidden_fcs….0.query_embs                          (1, 77 | 77 | 1, 512)
    llama_model.base_model.model.model.layers.N.self_attn.{q,k,v,o}_proj.lora_{A,B}.default.weight   (peft 0.3)
    llama_model.base_model.model.model.embed_tokens.weight     (32038, 4096), trained whole (base rows included)
    llama_model.base_model.model.lm_head.weight                (32038, 4096), idem
(stage-1/2 saves name the matrices `llama_model.model.embed_tokens.weight` / `llama_model.lm_head.weight`).
Rows 32000-32037 are the legacy added tokens in order: `<Img>`, `</Img>`, `[IMG0..3]`, `[VID0..23]`, `[AUD0..7]`.

Every key is consumed or the conversion stops naming the leftovers. The result runs with the `vicuna_v0` template,
legacy signal strings, a linear input projector and the shapes read from the tensors; the base LLM must be Vicuna
**v0** (LLaMA-7B + the v0 delta).

    converted = convert_legacy_state(torch.load(..., weights_only=True), load_config("nextgpt_7b_tiva_v0"))
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from nextgpt.compat.writer import ConvertedCheckpoint
from nextgpt.config import Config, LoRAConfig, OutputProjectorConfig, OutputProjectorsConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.llm.templates import get_template

LEGACY_WEIGHTS_FILE = "pytorch_model.pt"
LEGACY_PROJECTOR_PREFIXES = {
    Modality.IMAGE: "gen_text_hidden_fcs.0.",
    Modality.VIDEO: "gen_text_hidden_fcs_video.0.",
    Modality.AUDIO: "gen_text_hidden_fcs_audio.0.",
}
_PROJECTOR_PARTS = {"fc.": "in_fc.", "tfm.": "tfm.", "model.": "out_fc.", "query_embs": "query_embs"}
_LORA_KEY = re.compile(r"^llama_model\.(base_model\.model\..+\.lora_[AB])\.default\.weight$")
_EMBED_KEYS = ("llama_model.base_model.model.model.embed_tokens.weight", "llama_model.model.embed_tokens.weight")
_HEAD_KEYS = ("llama_model.base_model.model.lm_head.weight", "llama_model.lm_head.weight")


def read_state_file(path: Path, missing_hint: str) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict of tensors, read with weights-only unpickling (tensors only, no code).

    Raises:
        FileNotFoundError: the file is missing (the message ends with `missing_hint`).
        ValueError: the file is not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {missing_hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors; is it the file the NExT-GPT code saved?")
    return dict(state)


def read_legacy_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Load `pytorch_model.pt` of a legacy folder (`read_state_file`).

    Raises:
        FileNotFoundError: the folder has no `pytorch_model.pt`.
    """
    hint = "pass the legacy checkpoint folder (e.g. ckpt/delta_ckpt/nextgpt/7b_tiva_v0)"
    return read_state_file(Path(folder) / LEGACY_WEIGHTS_FILE, hint)


def _take(state: dict[str, torch.Tensor], keys: tuple[str, ...], what: str) -> torch.Tensor:
    found = [k for k in keys if k in state]
    if len(found) != 1:
        raise ValueError(f"legacy checkpoint must hold exactly one {what} matrix ({' or '.join(keys)}), found {found}")
    return state.pop(found[0])


def _projector_tensors(state: dict[str, torch.Tensor], modality: Modality) -> dict[str, torch.Tensor]:
    """Pop one modality's `TextFcLayer` tensors, renamed to `OutputProjector` names (fc->in_fc, model->out_fc)."""
    prefix = LEGACY_PROJECTOR_PREFIXES[modality]
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        part = next((p for p in _PROJECTOR_PARTS if rest.startswith(p)), None)
        if part is None:
            continue  # left in `state`: reported as unexpected
        out[_PROJECTOR_PARTS[part] + rest[len(part) :]] = state.pop(key)
    if not out:
        raise ValueError(f"legacy checkpoint has no {prefix}* tensors (the {modality.value} output projector)")
    for part, legacy_part in (
        ("in_fc.weight", "fc.weight"),
        ("out_fc.weight", "model.weight"),
        ("query_embs", "query_embs"),
    ):
        if part not in out:
            raise ValueError(f"legacy checkpoint is incomplete: {prefix}{legacy_part} is missing")
    return out


def projector_config(tensors: dict[str, torch.Tensor], num_heads: int) -> OutputProjectorConfig:
    """The `OutputProjectorConfig` whose module has exactly these tensor shapes (heads are not in the weights)."""

    def layers(side: str) -> int:
        return len({k.split(".")[3] for k in tensors if k.startswith(f"tfm.{side}.layers.")})

    return OutputProjectorConfig(
        num_queries=tensors["query_embs"].shape[1],
        out_dim=tensors["out_fc.weight"].shape[0],
        hidden_dim=tensors["in_fc.weight"].shape[0],
        num_heads=num_heads,
        num_encoder_layers=layers("encoder"),
        num_decoder_layers=layers("decoder"),
        ff_dim=tensors["tfm.encoder.layers.0.linear1.weight"].shape[0],
        dropout=0.0,
    )


def split_vocab_rows(matrix: torch.Tensor, num_base: int, name: str) -> dict[str, torch.Tensor]:
    """A whole vocabulary matrix as the project's token rows: frozen base rows + added rows."""
    return {f"{name}.base_weight": matrix[:num_base].clone(), f"{name}.new_rows": matrix[num_base:].clone()}


def lora_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoRAConfig | None]:
    """Pop the peft-0.3 LoRA tensors as peft adapter-file keys, with the rank and target modules they imply."""
    lora: dict[str, torch.Tensor] = {}
    for key in [k for k in state if _LORA_KEY.match(k)]:
        lora[_LORA_KEY.match(key).group(1) + ".weight"] = state.pop(key)  # type: ignore[union-attr]
    if not lora:
        return lora, None
    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(f"legacy LoRA tensors have several ranks {sorted(ranks)}; expected one")
    targets = tuple(sorted({k.split(".")[-3] for k in lora}))
    return lora, LoRAConfig(enabled=True, r=ranks.pop(), target_modules=targets)


def convert_legacy_state(state: dict[str, torch.Tensor], cfg: Config, source: str = "") -> ConvertedCheckpoint:
    """Map a legacy state dict onto the project's names and derive the config that fits it.

    Args:
        state: the legacy `pytorch_model.pt` contents (not modified).
        cfg: the base config: component paths (Vicuna v0, ImageBind, decoders), signal-token counts, output-projector
            heads, LoRA alpha/dropout, generation and decoder defaults (`configs/nextgpt_7b_tiva_v0.yaml`).
        source: where the state came from (meta.json).

    Returns:
        The converted checkpoint (stage 3, LoRA on when the file has LoRA tensors).

    Raises:
        ValueError: a missing part, a key nobody consumes, or shapes that contradict the config (named).
    """
    state = dict(state)
    template = get_template("vicuna_v0")
    signals = dataclasses.replace(cfg.model.signal_tokens, style="legacy", span_separator=None)
    num_added = len(template.extra_tokens) + signals.num_image + signals.num_video + signals.num_audio
    trainable: dict[str, torch.Tensor] = {}
    # 1. Input projector: one Linear, one token per item.
    weight, bias = state.pop("llama_proj.weight", None), state.pop("llama_proj.bias", None)
    if weight is None or bias is None:
        raise ValueError("legacy checkpoint has no llama_proj.weight / llama_proj.bias (the input projector)")
    if weight.shape[1] != cfg.model.encoder.out_embed_dim:
        raise ValueError(
            f"llama_proj reads {weight.shape[1]}-d encoder vectors but model.encoder.out_embed_dim is "
            f"{cfg.model.encoder.out_embed_dim}; use the ImageBind the checkpoint was trained with"
        )
    trainable.update({"input_projector.weight": weight, "input_projector.bias": bias})
    # 2. Output projectors.
    heads = {m: getattr(cfg.model.output_projectors, m.value).num_heads for m in MODALITIES}
    projector_cfgs = {}
    for modality in MODALITIES:
        tensors = _projector_tensors(state, modality)
        projector_cfgs[modality.value] = projector_config(tensors, heads[modality])
        trainable.update({f"output_projectors.{modality.value}.{k}": v for k, v in tensors.items()})
    # 3. Whole vocabulary matrices -> base rows + added rows.
    embed, head = _take(state, _EMBED_KEYS, "embed_tokens"), _take(state, _HEAD_KEYS, "lm_head")
    num_base = embed.shape[0] - num_added
    if head.shape != embed.shape or num_base <= 0:
        raise ValueError(
            f"legacy embed_tokens {tuple(embed.shape)} / lm_head {tuple(head.shape)} do not hold {num_added} added "
            f"rows (<Img>, </Img> and {num_added - 2} signal tokens from model.signal_tokens); set the signal counts "
            "the checkpoint was trained with"
        )
    trainable.update(split_vocab_rows(embed, num_base, "llm.model.embed_tokens"))
    trainable.update(split_vocab_rows(head, num_base, "llm.lm_head"))
    # 4. LoRA.
    lora, lora_shape = lora_tensors(state)
    if state:
        raise ValueError(f"legacy checkpoint has {len(state)} tensors no part consumes, e.g. {sorted(state)[:3]}")
    lora_cfg = dataclasses.replace(cfg.model.lora, enabled=False)
    if lora_shape is not None:
        lora_cfg = dataclasses.replace(
            cfg.model.lora, enabled=True, r=lora_shape.r, target_modules=lora_shape.target_modules
        )
    model_cfg = dataclasses.replace(
        cfg.model,
        llm=dataclasses.replace(cfg.model.llm, template=template.name),
        signal_tokens=signals,
        input_projector=dataclasses.replace(cfg.model.input_projector, type="linear"),
        output_projectors=OutputProjectorsConfig(**projector_cfgs),
        lora=lora_cfg,
    )
    out_cfg = dataclasses.replace(cfg, model=model_cfg, train=dataclasses.replace(cfg.train, stage=3))
    meta = {"converted_from": source, "format": "nextgpt-legacy (7b_tiva_v0)", "num_base_tokens": num_base}
    return ConvertedCheckpoint(out_cfg, trainable, lora, meta)
