"""Training data: dataset catalog, record parsing, datasets, collation, batch samplers and caption embeddings.

catalog = load_catalog(cfg.data.catalog_path)
datasets = build_datasets(cfg.data, catalog, tokenizer, signal_ids, cfg.model.encoder)
collate = Collator(pad_id=0, max_length=cfg.model.llm.max_length, tokens_per_media=projector.num_tokens)
"""

from nextgpt.data.catalog import load_catalog, validate_datasets
from nextgpt.data.collate import CollatedBatch, Collator
from nextgpt.data.datasets import (
    BadSampleError,
    ConversationDataset,
    SkippedSample,
    build_datasets,
    expected_caption_shapes,
)
from nextgpt.data.embeddings import caption_embedding_path, load_caption_embedding, save_caption_embedding
from nextgpt.data.records import MalformedRecordError, SampleSpec, Target, parse_record
from nextgpt.data.samplers import (
    ConcatIndex,
    LengthGroupedBatchSampler,
    ModalityBlendedBatchSampler,
    RandomBatchSampler,
    build_batch_sampler,
)

__all__ = [
    "BadSampleError",
    "CollatedBatch",
    "Collator",
    "ConcatIndex",
    "ConversationDataset",
    "LengthGroupedBatchSampler",
    "MalformedRecordError",
    "ModalityBlendedBatchSampler",
    "RandomBatchSampler",
    "SampleSpec",
    "SkippedSample",
    "Target",
    "build_batch_sampler",
    "build_datasets",
    "caption_embedding_path",
    "expected_caption_shapes",
    "load_caption_embedding",
    "load_catalog",
    "parse_record",
    "save_caption_embedding",
    "validate_datasets",
]
