"""Collator: right padding, row-major media / caption stacking, truncation that never splits a span or a placeholder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.data import Collator, ConversationDataset, SampleSpec, SkippedSample, load_catalog, save_caption_embedding
from nextgpt.data.collate import answer_ends
from nextgpt.data.records import Target
from nextgpt.llm.conversation import Turn
from nextgpt.signals import find_signal_spans

IMG, VID, AUD = Modality.IMAGE, Modality.VIDEO, Modality.AUDIO
TOKENS_PER_MEDIA = 8


@pytest.fixture()
def items(world, tokenizer, signal_ids, tiny_model_cfg, tmp_path, caption_shapes) -> list[dict]:
    """[three-round sample with media on both sides, one-round sample], built by the real dataset."""
    images = Path(load_catalog(world)["cc3m_enc"].image_dir)
    targets = []
    for i, modality in enumerate((IMG, AUD, VID, IMG)):
        path = save_caption_embedding(tmp_path / f"t{i}.npy", np.full(caption_shapes[modality], float(i), np.float32))
        targets.append(Target(modality, f"caption {i}", path))
    long_spec = SampleSpec(
        turns=[
            Turn("user", "<image> What is this?"), Turn("assistant", "A red circle. Here is another: <image>"),
            Turn("user", "<image> And this?"), Turn("assistant", "A blue square. And a sound: <audio>"),
            Turn("user", "Thanks, now a video."), Turn("assistant", "Here: <video>"),
        ],
        input_media=[(IMG, images / "train_img_00000.png"), (IMG, images / "train_img_00001.png")],
        targets=targets[:3],
        target_media=[None] * 3,
    )  # fmt: skip
    short_spec = SampleSpec(
        turns=[Turn("user", "<image> Draw it again."), Turn("assistant", "Sure <image>")],
        input_media=[(IMG, images / "train_img_00002.png")],
        targets=targets[3:],
        target_media=[None],
    )
    entry = DatasetEntryConfig(annotation_path=tmp_path / "unused.json")
    dataset = ConversationDataset("d", entry, [long_spec, short_spec], tokenizer, signal_ids, tiny_model_cfg.encoder)
    return [dataset[0], dataset[1]]


def _spliced_length(ids: torch.Tensor) -> int:
    return int(torch.where(ids < 0, TOKENS_PER_MEDIA, 1).sum())


def test_padding_and_row_major_stacking(items):
    collated = Collator(pad_id=7, max_length=1000, tokens_per_media=TOKENS_PER_MEDIA)(items)
    batch = collated.batch
    (n0, n1) = (len(items[0]["input_ids"]), len(items[1]["input_ids"]))
    assert batch.input_ids.shape == (2, max(n0, n1)) and n0 > n1
    assert batch.attention_mask.sum(dim=1).tolist() == [n0, n1]
    assert (batch.input_ids[1, n1:] == 7).all() and (batch.labels[1, n1:] == IGNORE_INDEX).all()
    assert torch.equal(batch.input_ids[0], items[0]["input_ids"]) and torch.equal(
        batch.labels[1, :n1], items[1]["labels"]
    )
    expected_images = items[0]["media"][IMG] + items[1]["media"][IMG]
    assert torch.equal(batch.media[IMG], torch.stack(expected_images))  # row 0's two images, then row 1's
    assert batch.caption_embeds[IMG][:, 0, 0].tolist() == [0.0, 3.0]  # span order, row-major
    assert batch.caption_embeds[AUD].shape == (1, 16) and batch.caption_embeds[VID].shape == (1, 77, 24)
    scan = find_signal_spans(batch.input_ids, {m: ids for m, ids in _signal_ids(items).items()})
    assert [scan.count(m) for m in (IMG, AUD, VID)] == [2, 1, 1]
    assert (collated.num_samples, collated.num_skipped, collated.num_truncated) == (2, 0, 0)


def _signal_ids(items) -> dict[Modality, list[int]]:
    ids, starts = items[0]["input_ids"], items[0]["signal_span_starts"]
    lengths = {IMG: 4, VID: 24, AUD: 8}
    return {m: ids[s[0] : s[0] + lengths[m]].tolist() for m, s in starts.items()}


def test_truncation_cuts_only_at_answer_ends_and_drops_matching_media(items):
    long_item = items[0]
    ids = long_item["input_ids"]
    ends = answer_ends(long_item["labels"])
    assert len(ends) == 3 and ends[-1] == len(ids)
    first_round = _spliced_length(ids[: ends[0]])
    collated = Collator(pad_id=0, max_length=first_round, tokens_per_media=TOKENS_PER_MEDIA)([long_item])
    batch = collated.batch
    assert collated.num_truncated == 1 and batch.input_ids.shape == (1, ends[0])
    assert torch.equal(batch.input_ids[0], ids[: ends[0]])
    assert batch.media[IMG].shape[0] == 1 and torch.equal(batch.media[IMG][0], long_item["media"][IMG][0])
    assert set(batch.caption_embeds) == {IMG} and batch.caption_embeds[IMG].shape[0] == 1
    too_short = Collator(pad_id=0, max_length=first_round - 1, tokens_per_media=TOKENS_PER_MEDIA)([long_item])
    assert too_short.batch is None and too_short.num_skipped == 1 and "too long" in too_short.skip_reasons[0]


def test_no_max_length_ever_splits_a_span_or_placeholder(items):
    signal_ids = _signal_ids(items)
    full = _spliced_length(items[0]["input_ids"])
    for max_length in range(1, full + 2):
        collated = Collator(pad_id=0, max_length=max_length, tokens_per_media=TOKENS_PER_MEDIA)(items[:1])
        if collated.batch is None:
            continue
        ids = collated.batch.input_ids[0]
        assert _spliced_length(ids) <= max_length
        scan = find_signal_spans(ids, signal_ids)
        assert scan.problems == []
        for m in (IMG, AUD, VID):
            assert scan.count(m) == (
                collated.batch.caption_embeds[m].shape[0] if m in collated.batch.caption_embeds else 0
            )
        num_sentinels = int((ids == SENTINEL_IDS[IMG]).sum())
        assert num_sentinels == (collated.batch.media[IMG].shape[0] if IMG in collated.batch.media else 0)
        assert collated.batch.labels[0, -1] == items[0]["labels"][answer_ends(items[0]["labels"])[0] - 1]


def test_all_skipped_gives_no_batch():
    skipped = [SkippedSample("d", 0, Path("a.png"), "corrupt"), SkippedSample("d", 1, None, "malformed record: x")]
    collated = Collator(pad_id=0, max_length=8)(skipped)
    assert collated.batch is None and collated.num_samples == 0
    assert collated.skip_reasons == ["d[0]: corrupt (a.png)", "d[1]: malformed record: x"]


def test_incomplete_caption_targets_are_left_out_of_the_batch(items, caplog):
    partial = dict(items[1], caption_embeds={})  # a target without a cached embedding
    with caplog.at_level(logging.WARNING, logger="nextgpt.data.collate"):
        batch = Collator(pad_id=0, max_length=1000)([items[0], partial]).batch
    assert IMG not in batch.caption_embeds and AUD in batch.caption_embeds
    assert any("2 image signal spans but only 1 caption_embeds" in r.getMessage() for r in caplog.records)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="max_length >= 1"):
        Collator(pad_id=0, max_length=0)


def test_dataloader_over_concatenated_catalog_datasets(world, tokenizer, signal_ids, tiny_model_cfg):
    from torch.utils.data import ConcatDataset, DataLoader

    from nextgpt.config import DataConfig
    from nextgpt.data import ConcatIndex, ModalityBlendedBatchSampler, build_datasets

    names = ("cc3m_enc", "alpaca_instruction", "image_instruction")
    datasets = build_datasets(
        DataConfig(datasets=names), load_catalog(world), tokenizer, signal_ids, tiny_model_cfg.encoder
    )
    index = ConcatIndex([len(d) for d in datasets])
    sampler = ModalityBlendedBatchSampler(index.sizes, batch_size=2, seed=0)
    loader = DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=Collator(0, 256))
    collated = list(loader)
    assert len(collated) == 6 and [c.datasets[0] for c in collated[:3]] == list(names)
    assert all(c.num_samples == 2 and len(set(c.datasets)) == 1 for c in collated)
    assert set(collated[0].batch.media) == {IMG} and not collated[0].batch.caption_embeds
    assert not collated[1].batch.media and collated[2].batch.caption_embeds[IMG].shape == (2, 77, 32)
