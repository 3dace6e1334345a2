"""NextGPT: ImageBind → input projector → LLM (signal tokens, optional LoRA) → output projectors.

The diffusion decoders stay outside this module (they are frozen, large and only needed to render media or for the
optional denoising loss); `forward` takes them as an argument when that loss is on.

    model = build_nextgpt(cfg.model)
    out = model(batch)                 # NextGPTOutput: loss, loss_terms, signal_embeds
    out.signal_embeds[Modality.IMAGE]  # (N_spans, 77, 768) -> a decoder's prompt_embeds
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from nextgpt.config import ModelConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.data.batch import NextGPTBatch
from nextgpt.data.layout import BatchLayout, build_layout
from nextgpt.encoders.imagebind import load_imagebind
from nextgpt.llm.backbone import decoder_layers, load_llm
from nextgpt.llm.conversation import system_prefix_ids
from nextgpt.llm.lora import apply_lora
from nextgpt.llm.prefix_cache import PrefixKVCache
from nextgpt.llm.splice import SplicedInputs, splice_media
from nextgpt.llm.templates import ChatTemplate, get_template
from nextgpt.llm.tokenizer import load_tokenizer, signal_token_ids
from nextgpt.llm.varlen import attached_prefix, varlen_kwargs
from nextgpt.losses import compute_caption_l2_loss, compute_lm_loss
from nextgpt.parameters import TOKEN_ROW_MARKER
from nextgpt.projectors.input_projector import build_input_projector
from nextgpt.projectors.output_projector import OutputProjector
from nextgpt.signals import SpanScan, find_signal_spans, gather_span_rows
from nextgpt.utils.step_timer import phase

logger = logging.getLogger(__name__)


@dataclass
class NextGPTOutput:
    """What a forward pass returns.

    Attributes:
        loss: weighted total (None when nothing was supervised, e.g. at inference).
        loss_terms: unweighted terms, e.g. {"ce": ..., "l2_image": ..., "denoise_audio": ...}.
        logits: (B, L', V) over the spliced sequence (packed rows: over the packed row).
        signal_embeds: projected conditioning per modality, (N_spans, Q, out_dim).
        spans: where the complete signal spans were found, plus problems.
        num_prefix_tokens: tokens of the shared prefix the collator stripped from every sample and the model served
            from its cache (`train.prefix_reuse`); the batch, and so `logits` and `spans`, hold what follows it.
        participation: with several data-parallel ranks (`NextGPT.data_parallel`), a training forward's 0-valued
            scalar through every projector the batch left idle (run on zero inputs); else None. Added to the loss
            (`loss` holds it), it gives those projectors the zero gradient DeepSpeed fills in for one process: every
            rank then gathers (ZeRO-3), runs and reduces the same parameters in the same order whatever modalities
            its micro-batches hold, which DeepSpeed requires.
    """

    loss: torch.Tensor | None
    loss_terms: dict[str, torch.Tensor]
    logits: torch.Tensor
    signal_embeds: dict[Modality, torch.Tensor]
    spans: SpanScan
    num_prefix_tokens: int = 0
    participation: torch.Tensor | None = None


class NextGPT(nn.Module):
    """The trainable any-to-any model around a frozen encoder and a (mostly frozen) LLM.

    Args:
        cfg: model config (sizes, loss weights).
        tokenizer: tokenizer with the signal tokens added.
        llm: causal LM (optionally a peft model) whose embeddings already include the signal-token rows.
        encoder: frozen ImageBind, or None when every batch brings precomputed `media_features`.
        input_projector: module (N, encoder_dim) -> (N, k, llm_dim).
        output_projectors: one module per modality name, (N, T, llm_dim) x2 -> (N, Q, out_dim).
        signal_ids: the signal span ids of each modality (`nextgpt.llm.tokenizer.signal_token_ids`).
        template: the chat template conversations are rendered with (`model.llm.template`).

    Attributes:
        prefix_kv: keys and values of the shared prefix a batch's layout names (`train.prefix_reuse`: the collator
            strips it from every sample), computed once (`PrefixKVCache`; `num_computed` counts prefix passes). Only
            valid while the LLM is frozen (signal-token rows may train); `forward` raises otherwise.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        tokenizer,
        llm: nn.Module,
        encoder: nn.Module | None,
        input_projector: nn.Module,
        output_projectors: nn.ModuleDict,
        signal_ids: dict[Modality, list[int]],
        template: ChatTemplate | None = None,
    ) -> None:
        super().__init__()
        self.template = template or get_template(cfg.llm.template)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.llm = llm
        self.encoder = encoder
        self.input_projector = input_projector
        self.output_projectors = output_projectors
        self.signal_ids = signal_ids
        self.prefix_kv = PrefixKVCache()
        self.data_parallel = False
        """Set by the training loop when several data-parallel ranks train: every training forward then runs every
        projector once, whatever its batch holds (see `NextGPTOutput.participation`)."""
        self._template_prefix_ids: list[int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.input_projector.parameters()).device

    @property
    def template_prefix_ids(self) -> list[int]:
        """The ids every conversation opens with (BOS, system prompt, "USER:"), tokenised once."""
        if self._template_prefix_ids is None:
            self._template_prefix_ids = system_prefix_ids(self.tokenizer, self.template)
        return self._template_prefix_ids

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of non-negative token ids: (B, L) -> (B, L, D)."""
        return self.llm.get_input_embeddings()(token_ids)

    def encode_media(self, batch: NextGPTBatch, idle: list[torch.Tensor] | None = None) -> dict[Modality, torch.Tensor]:
        """Encoder (if needed) + input projector for every media item of the batch.

        The projector runs once over every modality's items together, so each forward calls it exactly once whatever
        mix of media the batch holds (data-parallel ranks then issue the same collectives under ZeRO-3).

        Args:
            batch: the collated batch (raw media or precomputed features).
            idle: a data-parallel training forward's list of idle outputs: with no media in the batch the projector
                runs on one zero vector and its output goes here (see `NextGPTOutput.participation`); else None.

        Returns:
            Per modality (N, k, llm_dim) tokens, ready to splice.

        Raises:
            ValueError: raw media given but no encoder loaded.
        """
        proj_dtype = next(self.input_projector.parameters()).dtype
        features = {m: v.to(proj_dtype) for m, v in media_features(self.encoder, batch).items()}
        if not features:
            if idle is not None:
                zero = torch.zeros(1, self.input_projector.in_dim, device=self.device, dtype=proj_dtype)  # (1, E)
                idle.append(self.input_projector(zero))  # (1, k, llm_dim)
            return {}
        projected = self.input_projector(torch.cat(list(features.values())))  # (N_all, k, llm_dim)
        tokens: dict[Modality, torch.Tensor] = {}
        for modality, part in zip(features, projected.split([f.shape[0] for f in features.values()]), strict=True):
            sizes = (batch.media_group_sizes or {}).get(modality)
            tokens[modality] = part if sizes is None else sum_groups(part, sizes)  # (N, k, D) [-> (G, k, D)]
        return tokens

    def project_signals(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor,
        scan: SpanScan,
        idle: list[torch.Tensor] | None = None,
    ) -> dict[Modality, torch.Tensor]:
        """Run each modality's output projector on its complete signal spans, in `MODALITIES` order.

        Args:
            hidden: (B, L, D) last-layer hidden states.
            token_ids: (B, L) ids of the same positions (sentinels/padding allowed; only span positions are read).
            scan: spans found in `token_ids`.
            idle: a data-parallel training forward's list of idle outputs: a projector without spans runs on one
                span of zero hidden states and the modality's signal ids, through the same calls at the same place in
                the order (so every rank gathers, under ZeRO-3, and reduces the same parameters in the same order),
                and its output goes here (see `NextGPTOutput.participation`); else None.

        Returns:
            Per modality with at least one span: (N_spans, Q, out_dim).
        """
        projected: dict[Modality, torch.Tensor] = {}
        for modality in MODALITIES:
            projector = self.output_projectors[modality.value]
            proj_dtype = next(projector.parameters()).dtype
            spans = scan.spans.get(modality)
            if spans:
                signal_hidden = gather_span_rows(hidden, spans)  # (N, T, D)
                span_ids = gather_span_rows(token_ids.unsqueeze(-1), spans).squeeze(-1)  # (N, T)
            elif idle is not None:
                # The same calls on one span of the modality's own ids whose hidden states are 0 x the LLM's (so the
                # LLM output's backward hooks fire as they do with real spans): every rank runs the same modules.
                span_ids = torch.tensor([self.signal_ids[modality]], device=hidden.device)  # (1, T)
                signal_hidden = hidden[:1, :1].mul(0.0).expand(1, span_ids.shape[1], -1)  # (1, T, D)
            else:
                continue
            signal_embeds = self.embed_tokens(span_ids).to(signal_hidden.dtype)  # (N, T, D)
            out = projector(signal_hidden.to(proj_dtype), signal_embeds.to(proj_dtype))  # (N, Q, out_dim)
            if spans:
                projected[modality] = out
            else:
                idle.append(out)
        return projected

    def forward(self, batch: NextGPTBatch, decoders: dict | None = None) -> NextGPTOutput:
        """Teacher-forced pass with all configured losses.

        One route for every batch: the spliced rows go through the LLM as one flattened row, each sample attending to
        itself (and to the shared prefix the collator stripped, served from its cache), as the batch's layout says.

        Args:
            batch: a collated batch.
            decoders: loaded decoders per modality; needed only when `cfg.loss.denoise_weight > 0`.

        Returns:
            NextGPTOutput with the total loss and its terms.
        """
        idle: list[torch.Tensor] | None = [] if self.training and self.data_parallel else None
        # 1. Media → LLM tokens, spliced at the placeholders, and the signal spans: both read positions, which they do
        #    on the ids of the host batch (a read on the GPU would wait for everything queued before it).
        with phase("encode"):
            media_tokens = self.encode_media(batch, idle)
            host = batch.host_view
            spliced = splice_media(
                host.input_ids, host.attention_mask, host.labels, self.embed_tokens, media_tokens, device=self.device
            )
            scan = find_signal_spans(spliced.readable_token_ids, self.signal_ids)
        # 2. LLM pass; the last hidden layer feeds the output projectors.
        with phase("llm"):
            logits, hidden = self._run_llm(spliced.inputs_embeds, self._layout(batch, spliced))
        # 3. Signal spans → decoder conditioning.
        with phase("projectors"):
            signal_embeds = self.project_signals(hidden, spliced.token_ids, scan, idle)
        # 4. Loss terms.
        with phase("loss"):
            terms = self._loss_terms(batch, logits, spliced.labels, signal_embeds, decoders)
            participation = sum(out.float().sum() for out in idle) * 0.0 if idle else None
            loss = self.weighted_loss(terms)
            if loss is not None and participation is not None:
                loss = loss + participation
        return NextGPTOutput(
            loss=loss,
            loss_terms=terms,
            logits=logits,
            signal_embeds=signal_embeds,
            spans=scan,
            num_prefix_tokens=batch.layout.num_prefix if batch.layout is not None else 0,
            participation=participation,
        )

    def _layout(self, batch: NextGPTBatch, spliced: SplicedInputs) -> BatchLayout:
        """The batch's layout (the collator's), or one computed here for batches built by hand.

        Raises:
            ValueError: the collator spliced media with another width than the input projector produces.
        """
        layout = batch.layout
        if layout is None:
            host = batch.host_view  # the CPU batch it was copied from, if any: no wait for the GPU's ids
            layout = build_layout(
                host.input_ids, host.attention_mask, host.position_ids, self.input_projector.num_tokens
            )
            layout = layout.to(spliced.inputs_embeds.device)
        if (layout.rows, layout.width) != tuple(spliced.token_ids.shape):
            raise ValueError(
                f"the batch layout covers {layout.rows} x {layout.width} columns but splicing gave "
                f"{tuple(spliced.token_ids.shape)}; build the Collator with tokens_per_media="
                f"{self.input_projector.num_tokens} (the input projector's tokens per media item)"
            )
        return layout

    def _prefix_key_values(self, layout: BatchLayout) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer (keys, values) of the prefix the collator stripped, from the cache; None without one.

        Raises:
            ValueError: an LLM weight other than the signal-token rows trains (the cached keys would be stale).
        """
        if not layout.num_prefix:
            return None
        trainable = [n for n, p in self.llm.named_parameters() if p.requires_grad and TOKEN_ROW_MARKER not in n]
        if trainable:
            raise ValueError(
                f"train.prefix_reuse needs a frozen LLM, but {len(trainable)} LLM parameters train (e.g. "
                f"{trainable[0]}); set train.prefix_reuse=false in stages that train LoRA"
            )
        return self.prefix_kv.key_values(self.llm, self.embed_tokens, layout.prefix_ids, self.device)

    def _run_llm(self, embeds: torch.Tensor, layout: BatchLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM over the batch as one flattened row, every sample attending to itself (`nextgpt.llm.varlen`).

        Args:
            embeds: (B, L', D) spliced input embeddings.
            layout: where the samples are (positions, boundaries, the cached prefix).

        Returns:
            (B, L', V) logits and (B, L', D) last-layer hidden states.
        """
        batch_size, width = embeds.shape[:2]
        prefix = self._prefix_key_values(layout)
        flat = embeds.reshape(1, batch_size * width, embeds.shape[-1])  # (B, L', D) -> (1, T, D)
        with attached_prefix(decoder_layers(self.llm) if prefix else None, prefix):
            out = self.llm(inputs_embeds=flat, output_hidden_states=True, use_cache=False, **varlen_kwargs(layout))
        logits = out.logits.reshape(batch_size, width, -1)  # (1, T, V) -> (B, L', V)
        hidden = out.hidden_states[-1].reshape(batch_size, width, -1)  # (1, T, D) -> (B, L', D)
        return logits, hidden

    def _loss_terms(
        self,
        batch: NextGPTBatch,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        signal_embeds: dict[Modality, torch.Tensor],
        decoders: dict | None,
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if labels is not None:
            terms["ce"] = compute_lm_loss(logits, labels)
        for modality, target in batch.caption_embeds.items():
            predicted = signal_embeds.get(modality)
            if predicted is None or predicted.shape[0] != target.shape[0]:
                raise ValueError(
                    f"batch has {target.shape[0]} {modality.value} caption embeddings but "
                    f"{0 if predicted is None else predicted.shape[0]} complete {modality.value} signal spans; "
                    "every generation target needs exactly one signal span"
                )
            terms[f"l2_{modality.value}"] = compute_caption_l2_loss(predicted, target.to(predicted.dtype))
        if self.cfg.loss.denoise_weight > 0 and batch.denoise_targets:
            terms.update(self._denoising_terms(batch, signal_embeds, decoders))
        return terms

    def _denoising_terms(
        self, batch: NextGPTBatch, signal_embeds: dict[Modality, torch.Tensor], decoders: dict | None
    ) -> dict[str, torch.Tensor]:
        from nextgpt.decoders.denoising import compute_denoising_loss

        terms = {}
        for modality, target in batch.denoise_targets.items():
            if decoders is None or modality not in decoders:
                raise ValueError(
                    f"model.loss.denoise_weight > 0 needs the {modality.value} decoder loaded; "
                    "pass decoders=... or set model.loss.denoise_weight=0"
                )
            terms[f"denoise_{modality.value}"] = compute_denoising_loss(
                decoders[modality],
                target,
                as_prompt_embeds(modality, signal_embeds[modality]),
                snr_gamma=self.cfg.loss.snr_gamma,
            )
        return terms

    def weighted_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The training objective from unweighted terms ("ce", "l2_<m>", "denoise_<m>"): each times its
        `model.loss` weight, summed (float32); None for no terms."""
        weights = {
            "ce": self.cfg.loss.ce_weight,
            "l2": self.cfg.loss.l2_weight,
            "denoise": self.cfg.loss.denoise_weight,
        }
        total = None
        for name, value in terms.items():
            weighted = weights[name.split("_")[0]] * value.float()
            total = weighted if total is None else total + weighted
        return total


def media_features(encoder: nn.Module | None, batch: NextGPTBatch) -> dict[Modality, torch.Tensor]:
    """Every media modality's (N, encoder_dim) vectors, in `MODALITIES` order: the batch's precomputed ones, else the
    frozen encoder's (no gradient).

    Raises:
        ValueError: raw media given but no encoder.
    """
    features: dict[Modality, torch.Tensor] = {}
    for modality in MODALITIES:
        vectors = batch.media_features.get(modality)
        if vectors is None and modality in batch.media:
            if encoder is None:
                raise ValueError(
                    f"batch has raw {modality.value} media but the model was built without an encoder; "
                    "set model.encoder.checkpoint_path or pass precomputed media_features"
                )
            with torch.no_grad():
                vectors = encoder(modality, batch.media[modality])  # (N, encoder_dim)
        if vectors is not None:
            features[modality] = vectors
    return features


def with_media_features(encoder: nn.Module, batch: NextGPTBatch) -> NextGPTBatch:
    """The batch with its raw media replaced by the frozen encoder's vectors (`media_features`)."""
    if not batch.media:
        return batch
    return replace(batch, media={}, media_features=media_features(encoder, batch))


def sum_groups(tokens: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Sum consecutive items: (N, k, D) with group sizes summing to N -> (G, k, D) (the legacy several-inputs rule).

    Raises:
        ValueError: the sizes do not add up to N.
    """
    if sum(sizes) != tokens.shape[0] or any(size < 1 for size in sizes):
        raise ValueError(f"media group sizes {sizes} do not cover the {tokens.shape[0]} media items of the batch")
    return torch.stack([chunk.sum(dim=0) for chunk in torch.split(tokens, sizes)])  # (G, k, D)


def as_prompt_embeds(modality: Modality, projected: torch.Tensor) -> torch.Tensor:
    """Shape projected conditioning for a decoder: AudioLDM takes (N, D), the others (N, Q, D)."""
    return projected.squeeze(1) if modality is Modality.AUDIO else projected  # (N, 1, D) -> (N, D)


def build_nextgpt(cfg: ModelConfig, load_encoder: bool = True) -> NextGPT:
    """Build the model from local checkpoints named in the config.

    Args:
        cfg: model config; paths must point at real or tiny checkpoints in the official formats.
        load_encoder: False skips ImageBind (when batches bring precomputed features).

    Returns:
        A NextGPT on CPU; only the trainable parts the stage enables will need gradients (see nextgpt.training).
    """
    if cfg.llm.model_path is None:
        raise ValueError("model.llm.model_path is not set; point it at a local HF LLaMA/Vicuna folder")
    template = get_template(cfg.llm.template)
    tokenizer = load_tokenizer(cfg.llm.model_path, cfg.signal_tokens, template)
    llm = load_llm(cfg.llm, tokenizer)
    if cfg.lora.enabled:
        llm = apply_lora(llm, cfg.lora)
    llm_dim = llm.config.hidden_size
    encoder = load_imagebind(cfg.encoder) if load_encoder else None
    input_projector = build_input_projector(cfg.input_projector, cfg.encoder.out_embed_dim, llm_dim)
    output_projectors = nn.ModuleDict(
        {m.value: OutputProjector(getattr(cfg.output_projectors, m.value), llm_dim) for m in MODALITIES}
    )
    return NextGPT(
        cfg,
        tokenizer,
        llm,
        encoder,
        input_projector,
        output_projectors,
        signal_token_ids(tokenizer, cfg.signal_tokens),
        template,
    )
