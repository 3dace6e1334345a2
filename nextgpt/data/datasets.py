"""Training datasets: one `ConversationDataset` per catalog entry, turning records into token ids + media tensors.

Every format (X->text, text->X, instruction, MosIT) goes through the same path: record -> `SampleSpec`
(records.py) -> Vicuna v1 ids/labels (llm/conversation.py) -> media tensors (encoders/transforms.py), or cached
ImageBind vectors (features.py) when `data.feature_cache_dir` is set, and cached caption embeddings (embeddings.py). A bad sample (missing/corrupt file, malformed record, unreadable embedding,
nothing supervised) becomes a `SkippedSample` under policy "skip" and raises `BadSampleError` under "error".

    datasets = build_datasets(cfg.data, load_catalog(cfg.data.catalog_path), tokenizer, signal_ids, cfg.model.encoder)
    item = datasets[0][0]      # dict: input_ids, labels, media, caption_embeds, ... (or a SkippedSample)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from nextgpt.config import DataConfig, DatasetEntryConfig, ImageBindConfig, OutputProjectorsConfig
from nextgpt.constants import IGNORE_INDEX, MODALITIES, Modality
from nextgpt.data.catalog import validate_datasets
from nextgpt.data.embeddings import caption_embedding_shape, load_caption_embedding
from nextgpt.data.features import FeatureCache, load_feature_cache, media_key
from nextgpt.data.records import MalformedRecordError, SampleSpec, load_records, parse_record
from nextgpt.signals import find_signal_spans

logger = logging.getLogger(__name__)

BadSamplePolicy = Literal["skip", "error"]
TargetLoader = Callable[[Modality, Path], torch.Tensor]
"""Loads a generation target's media file for the denoising loss: (modality, path) -> tensor."""

_MAX_MISMATCH_WARNINGS = 3


@dataclass
class SkippedSample:
    """Stands in for a sample that could not be used (policy "skip"); the collator counts and reports it."""

    dataset: str
    index: int
    path: Path | None
    reason: str


class BadSampleError(ValueError):
    """A sample could not be used under policy "error"; the message names the dataset, index, path and reason."""


class _BadSample(Exception):
    """Internal: carries the offending path and reason up to the policy decision."""

    def __init__(self, path: Path | None, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


@dataclass
class _Malformed:
    reason: str


def expected_caption_shapes(cfg: OutputProjectorsConfig) -> dict[Modality, tuple[int, ...]]:
    """Shape each modality's cached caption embedding must have, from the output-projector config.

    Args:
        cfg: `model.output_projectors`.

    Returns:
        e.g. {IMAGE: (77, 768), VIDEO: (77, 1024), AUDIO: (512,)}.
    """
    return {
        m: caption_embedding_shape(getattr(cfg, m.value).num_queries, getattr(cfg, m.value).out_dim) for m in MODALITIES
    }


def modality_tag(spec: SampleSpec) -> str:
    """Short tag of the modalities a sample uses, e.g. "image", "image+audio", or "text"."""
    return "+".join(m.value for m in spec.modalities) or "text"


class ConversationDataset(Dataset):
    """Samples of one catalog dataset, any official record format.

    Args:
        name: catalog name (used in logs and errors).
        entry: the catalog entry (annotation file and this dataset's own folders).
        source: parsed `SampleSpec`s, or an annotation file; None reads `entry.annotation_path`.
        tokenizer: LLM tokenizer with the signal tokens added.
        signal_ids: signal-token ids per modality.
        encoder_cfg: ImageBind preprocessing settings for the input media.
        policy: "skip" returns a `SkippedSample` for a bad sample; "error" raises `BadSampleError`.
        caption_embed_shapes: expected shape of each modality's caption embedding (see
            `expected_caption_shapes`); None accepts any shape.
        target_loader: loads target media for the denoising loss; None leaves `denoise_targets` empty.
        feature_cache: this dataset's precomputed ImageBind vectors; when given, input media come as
            `media_features` and the media files are not read (a file missing from the cache is a bad sample).

    Raises:
        FileNotFoundError / ValueError: unreadable annotation file.
        BadSampleError: a malformed record under policy "error".
    """

    def __init__(
        self,
        name: str,
        entry: DatasetEntryConfig,
        source: Path | Sequence[SampleSpec] | None,
        tokenizer: Any,
        signal_ids: dict[Modality, list[int]],
        encoder_cfg: ImageBindConfig,
        policy: BadSamplePolicy = "skip",
        caption_embed_shapes: dict[Modality, tuple[int, ...]] | None = None,
        target_loader: TargetLoader | None = None,
        feature_cache: FeatureCache | None = None,
        template: str = "vicuna_v1",
    ) -> None:
        if policy not in ("skip", "error"):
            raise ValueError(f"bad-sample policy must be 'skip' or 'error', got {policy!r}")
        self.name = name
        self.entry = entry
        self.tokenizer = tokenizer
        self.signal_ids = signal_ids
        self.encoder_cfg = encoder_cfg
        self.policy = policy
        self.caption_embed_shapes = caption_embed_shapes or {}
        self.target_loader = target_loader
        self.feature_cache = feature_cache
        self.template = template
        self.num_tokenization_mismatches = 0
        self._logged: set[int] = set()
        if source is None or isinstance(source, (str, Path)):
            self.annotation_path: Path | None = Path(entry.annotation_path if source is None else source)
            records = load_records(self.annotation_path)
            if entry.kind == "tool":  # one sample per right tool, as MLLM-Tool trains
                from nextgpt.data.tool_records import expand_tool_records

                records = expand_tool_records(records)
            self._specs = self._parse(records)
        else:
            self.annotation_path = None
            self._specs = list(source)

    def _parse(self, records: list[dict[str, Any]]) -> list[SampleSpec | _Malformed]:
        specs: list[SampleSpec | _Malformed] = []
        for index, record in enumerate(records):
            try:
                specs.append(parse_record(record, self.entry))
            except MalformedRecordError as err:
                if self.policy == "error":
                    message = self._describe(index, self._record_path(index), f"malformed record: {err}")
                    raise BadSampleError(message) from err
                specs.append(_Malformed(f"malformed record: {err}"))
        num_bad = sum(isinstance(s, _Malformed) for s in specs)
        if num_bad:
            first = next(s.reason for s in specs if isinstance(s, _Malformed))
            logger.warning(
                "%s: %d of %d records are malformed and will be skipped; first: %s",
                self.name,
                num_bad,
                len(specs),
                first,
            )
        return specs

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, index: int) -> SampleSpec | None:
        """The parsed record at `index` (None when it is malformed)."""
        spec = self._specs[index]
        return spec if isinstance(spec, SampleSpec) else None

    def lengths(self) -> list[int]:
        """Approximate token length of every sample (words + media + signal tokens), cheap enough for samplers."""
        num_signals = {m: len(ids) for m, ids in self.signal_ids.items()}
        lengths = []
        for spec in self._specs:
            if not isinstance(spec, SampleSpec):
                lengths.append(1)
                continue
            # +4 per turn: the template's role words and separators.
            words = sum(len(turn.text.split()) + 4 for turn in spec.turns)
            lengths.append(words + len(spec.input_media) + sum(num_signals.get(t.modality, 0) for t in spec.targets))
        return lengths

    def modality_tags(self) -> list[str]:
        """Per-sample modality tag ("image", "image+audio", "text", …; malformed records: "text")."""
        return [modality_tag(s) if isinstance(s, SampleSpec) else "text" for s in self._specs]

    def _record_path(self, index: int) -> Path | None:
        return None if self.annotation_path is None else Path(f"{self.annotation_path}[{index}]")

    def _describe(self, index: int, path: Path | None, reason: str) -> str:
        where = f" ({path})" if path is not None else ""
        return f"{self.name}[{index}]: {reason}{where}"

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        """Sample `index` as a dict, or a `SkippedSample` when it is bad and the policy is "skip".

        Returns:
            `input_ids`, `labels`: (L,) long tensors; `media`: {Modality: [tensor, ...]} in placeholder order, or
            `media_features`: {Modality: [(encoder_dim,) tensor, ...]} with a feature cache (the other one empty);
            `caption_embeds`, `denoise_targets`: {Modality: [tensor, ...]} in signal-span order;
            `signal_span_starts`: {Modality: [position, ...]}; `modality` tag; `length` (= L); `dataset`, `index`;
            `tokenization_mismatch`.

        Raises:
            BadSampleError: the sample is bad and the policy is "error".
        """
        spec = self._specs[index]
        try:
            if isinstance(spec, _Malformed):
                raise _BadSample(self._record_path(index), spec.reason)
            return self._build_item(index, spec)
        except _BadSample as bad:
            message = self._describe(index, bad.path, bad.reason)
            if self.policy == "error":
                raise BadSampleError(message + "; fix or remove it, or set data.bad_sample_policy=skip") from None
            if index not in self._logged:
                self._logged.add(index)
                logger.warning("skipping sample %s", message)
            return SkippedSample(self.name, index, bad.path, bad.reason)

    def _build_item(self, index: int, spec: SampleSpec) -> dict[str, Any]:
        # 1. Token ids and labels (Vicuna v1; placeholders -> sentinels, assistant placeholders -> signal spans).
        input_ids, labels, mismatch = self._tokenize(index, spec)
        span_starts = self._signal_span_starts(index, spec, input_ids)
        # 2. Input media (or their cached ImageBind vectors) in placeholder order, per modality.
        media: dict[Modality, list[torch.Tensor]] = {}
        media_features: dict[Modality, list[torch.Tensor]] = {}
        for modality, path in spec.input_media:
            if self.feature_cache is None:
                media.setdefault(modality, []).append(self._load_media(modality, path))
            else:
                media_features.setdefault(modality, []).append(self._cached_features(modality, path))
        # 3. Caption embeddings (and optional target media) in span order, per modality.
        caption_embeds: dict[Modality, list[torch.Tensor]] = {}
        denoise_targets: dict[Modality, list[torch.Tensor]] = {}
        for target, target_path in zip(spec.targets, spec.target_media, strict=True):
            if target.embedding_path is not None:
                caption_embeds.setdefault(target.modality, []).append(self._load_caption(target))
            if self.target_loader is not None and target_path is not None:
                denoise_targets.setdefault(target.modality, []).append(
                    self._guarded(target_path, lambda t=target, p=target_path: self.target_loader(t.modality, p))
                )
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "media": media,
            "media_features": media_features,
            "caption_embeds": caption_embeds,
            "denoise_targets": denoise_targets,
            "signal_span_starts": span_starts,
            "modality": modality_tag(spec),
            "length": len(input_ids),
            "dataset": self.name,
            "index": index,
            "tokenization_mismatch": mismatch,
        }

    def _tokenize(self, index: int, spec: SampleSpec) -> tuple[list[int], list[int], bool]:
        from nextgpt.llm.conversation import build_training_example, check_tokenization

        try:
            example = build_training_example(self.tokenizer, spec.turns, self.signal_ids, self.template)
        except ValueError as err:
            raise _BadSample(self._record_path(index), f"tokenization failed: {err}") from err
        if all(label == IGNORE_INDEX for label in example.labels):
            raise _BadSample(self._record_path(index), "no supervised token (every label is masked)")
        mismatch = not check_tokenization(self.tokenizer, spec.turns, example, self.signal_ids, self.template)
        if mismatch:
            self.num_tokenization_mismatches += 1
            if self.num_tokenization_mismatches <= _MAX_MISMATCH_WARNINGS:
                logger.warning(
                    "%s[%d]: per-segment ids differ from tokenising the rendered prompt in one piece; the sample is "
                    "used (labels come from the segments) and counted as a tokenization mismatch",
                    self.name,
                    index,
                )
        return list(example.input_ids), list(example.labels), mismatch

    def _signal_span_starts(self, index: int, spec: SampleSpec, input_ids: list[int]) -> dict[Modality, list[int]]:
        scan = find_signal_spans(input_ids, self.signal_ids)
        if scan.problems:
            raise _BadSample(self._record_path(index), f"signal tokens: {scan.problems[0]}")
        starts = {m: [s.start for s in spans] for m, spans in scan.spans.items() if spans}
        for m in MODALITIES:
            expected = sum(t.modality == m for t in spec.targets)
            if len(starts.get(m, [])) != expected:
                raise _BadSample(
                    self._record_path(index),
                    f"{expected} {m.value} target(s) but {len(starts.get(m, []))} {m.value} signal span(s) in the ids",
                )
        return starts

    def _guarded(self, path: Path, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            return load()
        except (FileNotFoundError, ValueError, OSError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _BadSample(path, reason) from err

    def _load_media(self, modality: Modality, path: Path) -> torch.Tensor:
        from nextgpt.encoders.transforms import load_media

        return self._guarded(path, lambda: load_media(modality, path, self.encoder_cfg))

    def _cached_features(self, modality: Modality, path: Path) -> torch.Tensor:
        key = media_key(getattr(self.entry, f"{modality.value}_dir"), path)
        features = self.feature_cache.lookup(modality, key)
        if features is None:
            raise _BadSample(path, self.feature_cache.missing_reason(modality, key))
        return features

    def _load_caption(self, target: Any) -> torch.Tensor:
        path = target.embedding_path
        shape = self.caption_embed_shapes.get(target.modality)
        return self._guarded(path, lambda: load_caption_embedding(path, shape))


def build_datasets(
    data_cfg: DataConfig,
    catalog: dict[str, DatasetEntryConfig],
    tokenizer: Any,
    signal_ids: dict[Modality, list[int]],
    encoder_cfg: ImageBindConfig,
    caption_embed_shapes: dict[Modality, tuple[int, ...]] | None = None,
    target_loader: TargetLoader | None = None,
    template: str = "vicuna_v1",
) -> list[ConversationDataset]:
    """Validate the run's datasets against the catalog and build one dataset per name, in `data_cfg.datasets` order.

    Args:
        data_cfg: `cfg.data` (dataset names and bad-sample policy).
        catalog: from `load_catalog(cfg.data.catalog_path)`.
        tokenizer: LLM tokenizer with signal tokens.
        signal_ids: signal-token ids per modality.
        encoder_cfg: `cfg.model.encoder`.
        caption_embed_shapes: see `expected_caption_shapes(cfg.model.output_projectors)`.
        target_loader: optional target-media loader for the denoising loss.
        template: the chat template name (`model.llm.template`).

    Returns:
        The datasets; with `data_cfg.feature_cache_dir` set, each reads its input media from its feature cache.

    Raises:
        ValueError: unknown dataset names or missing files/folders (see `validate_datasets`), or a feature cache
            written by another encoder (`FeatureCacheError`).
        FileNotFoundError: `data_cfg.feature_cache_dir` is set but has no cache for a dataset.
    """
    validate_datasets(list(data_cfg.datasets), catalog, media=data_cfg.feature_cache_dir is None)
    caches: dict[str, FeatureCache | None] = {name: None for name in data_cfg.datasets}
    if data_cfg.feature_cache_dir is not None:
        caches = {name: load_feature_cache(data_cfg.feature_cache_dir, name, encoder_cfg) for name in caches}
    return [
        ConversationDataset(
            name,
            catalog[name],
            None,
            tokenizer,
            signal_ids,
            encoder_cfg,
            policy=data_cfg.bad_sample_policy,
            caption_embed_shapes=caption_embed_shapes,
            target_loader=target_loader,
            feature_cache=caches[name],
            template=template,
        )
        for name in data_cfg.datasets
    ]
