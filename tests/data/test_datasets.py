"""ConversationDataset: items from every kind of record, and the bad-sample policy (skip vs error)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from nextgpt.config import DataConfig
from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.data import (
    BadSampleError,
    Collator,
    ConversationDataset,
    SampleSpec,
    SkippedSample,
    build_datasets,
    load_catalog,
)
from nextgpt.data.records import Target
from nextgpt.llm.conversation import Turn


@pytest.fixture()
def make_dataset(world, tokenizer, signal_ids, tiny_model_cfg, caption_shapes):
    """Build a dataset of the synthetic world by catalog name, optionally with changed entry fields."""

    def make(name: str, policy: str = "skip", **changes) -> ConversationDataset:
        entry = dataclasses.replace(load_catalog(world)[name], **changes)
        return ConversationDataset(
            name, entry, None, tokenizer, signal_ids, tiny_model_cfg.encoder, policy=policy,
            caption_embed_shapes=caption_shapes,
        )  # fmt: skip

    return make


def test_generation_item_has_ids_labels_span_and_caption_embedding(make_dataset, tokenizer, signal_ids, caption_shapes):
    dataset = make_dataset("cc3m_dec")
    item = dataset[0]
    ids, labels = item["input_ids"], item["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.ndim == 1
    (start,) = item["signal_span_starts"][Modality.IMAGE]
    span = ids[start : start + len(signal_ids[Modality.IMAGE])].tolist()
    assert span == signal_ids[Modality.IMAGE]
    assert labels[start : start + len(span)].tolist() == span  # the signal span is supervised
    assert labels[-1] == tokenizer.eos_token_id and labels[0] == IGNORE_INDEX
    assert item["caption_embeds"][Modality.IMAGE][0].shape == caption_shapes[Modality.IMAGE]
    assert item["media"] == {} and item["modality"] == "image" and item["length"] == len(ids)
    assert not item["tokenization_mismatch"]


def test_comprehension_item_splices_one_sentinel_per_media(make_dataset):
    dataset = make_dataset("llava_instruction")
    item = dataset[1]
    assert int((item["input_ids"] == SENTINEL_IDS[Modality.IMAGE]).sum()) == 2
    assert [tuple(t.shape) for t in item["media"][Modality.IMAGE]] == [(3, 224, 224)] * 2
    assert (item["labels"][item["input_ids"] < 0] == IGNORE_INDEX).all()
    assert dataset.modality_tags() == ["image"] * len(dataset)
    assert all(length > 10 for length in dataset.lengths())


@pytest.fixture()
def broken_images(world: Path, tmp_path: Path) -> Path:
    """A copy of the train images with image 1 corrupt and image 2 missing."""
    images = tmp_path / "images"
    shutil.copytree(load_catalog(world)["cc3m_enc"].image_dir, images)
    (images / "train_img_00001.png").write_bytes(b"\x89PNG broken")
    (images / "train_img_00002.png").unlink()
    return images


def test_skip_policy_skips_counts_and_logs_each_bad_path_once(make_dataset, broken_images, caplog):
    dataset = make_dataset("cc3m_enc", image_dir=broken_images)
    with caplog.at_level(logging.WARNING, logger="nextgpt.data.datasets"):
        items = [dataset[i] for i in range(len(dataset))] + [dataset[1]]
    skipped = [item for item in items if isinstance(item, SkippedSample)]
    assert [(s.index, s.path) for s in skipped] == [
        (1, broken_images / "train_img_00001.png"),
        (2, broken_images / "train_img_00002.png"),
        (1, broken_images / "train_img_00001.png"),
    ]
    assert all(s.dataset == "cc3m_enc" and s.reason for s in skipped)
    warnings = [r.getMessage() for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(warnings) == 2 and str(broken_images / "train_img_00001.png") in warnings[0]
    collated = Collator(pad_id=0, max_length=256)(items)
    assert (collated.num_samples, collated.num_skipped) == (2, 3)
    assert collated.batch.media[Modality.IMAGE].shape == (2, 3, 224, 224)
    assert str(broken_images / "train_img_00002.png") in collated.skip_reasons[1]


def test_error_policy_raises_one_line_with_path(make_dataset, broken_images):
    dataset = make_dataset("cc3m_enc", policy="error", image_dir=broken_images)
    assert isinstance(dataset[0], dict)
    with pytest.raises(BadSampleError, match=r"cc3m_enc\[2\]: .*train_img_00002\.png.*bad_sample_policy=skip") as err:
        dataset[2]
    assert "\n" not in str(err.value)


def test_malformed_record_is_skipped_or_raised_at_load(world, tokenizer, signal_ids, tiny_model_cfg, tmp_path):
    entry = load_catalog(world)["cc3m_enc"]
    records = json.loads(Path(entry.annotation_path).read_text())[:3]
    records[1]["input_image"] = "../../escape.png"
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps(records))
    args = ("x", entry, annotation, tokenizer, signal_ids, tiny_model_cfg.encoder)
    dataset = ConversationDataset(*args, policy="skip")
    bad = dataset[1]
    assert isinstance(bad, SkippedSample) and bad.path == Path(f"{annotation}[1]")
    assert "malformed record" in bad.reason and "relative path inside" in bad.reason
    assert dataset.spec(1) is None and isinstance(dataset[0], dict)
    with pytest.raises(BadSampleError, match=r"x\[1\]: malformed record.*ann\.json\[1\]"):
        ConversationDataset(*args, policy="error")


def test_missing_and_misshapen_caption_embeddings_are_bad_samples(make_dataset, world, tokenizer, signal_ids,
                                                                  tiny_model_cfg, tmp_path):  # fmt: skip
    empty = make_dataset("audiocap_dec", caption_embed_dir=tmp_path)
    missing = empty[0]
    assert isinstance(missing, SkippedSample) and "preprocess_embeddings" in missing.reason
    assert missing.path.parent == tmp_path
    wrong = ConversationDataset(
        "audiocap_dec", load_catalog(world)["audiocap_dec"], None, tokenizer, signal_ids, tiny_model_cfg.encoder,
        caption_embed_shapes={Modality.AUDIO: (512,)},
    )  # fmt: skip
    skipped = wrong[0]
    assert isinstance(skipped, SkippedSample) and "expected (512,)" in skipped.reason


def test_unsupervised_sample_is_bad(make_dataset, monkeypatch):
    import nextgpt.llm.conversation as conversation

    real = conversation.build_training_example

    def masked(tok, turns, ids, template=None):
        example = real(tok, turns, ids, template)
        return conversation.Example(example.input_ids, [IGNORE_INDEX] * len(example.labels))

    monkeypatch.setattr(conversation, "build_training_example", masked)
    item = make_dataset("alpaca_instruction")[0]
    assert isinstance(item, SkippedSample) and "no supervised token" in item.reason


def test_tokenization_mismatch_is_counted_and_sample_kept(tokenizer, signal_ids, tiny_model_cfg, tmp_path):
    spec = SampleSpec(turns=[Turn("user", "What does </s> mean?"), Turn("assistant", "It ends a turn.")])
    entry = load_catalog_entry(tmp_path)
    dataset = ConversationDataset("t", entry, [spec, spec], tokenizer, signal_ids, tiny_model_cfg.encoder)
    items = [dataset[0], dataset[1]]
    assert all(item["tokenization_mismatch"] for item in items)
    assert dataset.num_tokenization_mismatches == 2
    assert Collator(pad_id=0, max_length=256)(items).num_tokenization_mismatches == 2


def test_target_count_must_match_signal_spans(tokenizer, signal_ids, tiny_model_cfg, tmp_path):
    spec = SampleSpec(
        turns=[Turn("user", "Draw."), Turn("assistant", "Here.")],
        targets=[Target(Modality.IMAGE, "a cat", None)],
        target_media=[None],
    )
    dataset = ConversationDataset("t", load_catalog_entry(tmp_path), [spec], tokenizer, signal_ids,
                                  tiny_model_cfg.encoder)  # fmt: skip
    item = dataset[0]
    assert isinstance(item, SkippedSample) and "1 image target(s) but 0 image signal span(s)" in item.reason


def test_build_datasets_validates_names_and_keeps_order(world, tokenizer, signal_ids, tiny_model_cfg):
    catalog = load_catalog(world)
    names = ("webvid_enc", "alpaca_instruction")
    datasets = build_datasets(DataConfig(datasets=names), catalog, tokenizer, signal_ids, tiny_model_cfg.encoder)
    assert [d.name for d in datasets] == list(names)
    assert datasets[0].entry.video_dir == catalog["webvid_enc"].video_dir and datasets[0].entry.image_dir is None
    with pytest.raises(ValueError, match="did you mean 'alpaca_instruction'"):
        build_datasets(DataConfig(datasets=("alpaca",)), catalog, tokenizer, signal_ids, tiny_model_cfg.encoder)


def load_catalog_entry(tmp_path: Path):
    from nextgpt.config import DatasetEntryConfig

    return DatasetEntryConfig(annotation_path=tmp_path / "unused.json")


def test_target_loader_fills_denoise_targets_in_span_order(world, tokenizer, signal_ids, tiny_model_cfg):
    import torchvision.transforms.functional as tvf
    from PIL import Image

    def load_target(modality: Modality, path: Path) -> torch.Tensor:
        return tvf.to_tensor(Image.open(path).convert("RGB"))  # (3, 64, 64)

    entry = load_catalog(world)["cc3m_dec"]
    dataset = ConversationDataset(
        "cc3m_dec", entry, None, tokenizer, signal_ids, tiny_model_cfg.encoder, target_loader=load_target
    )
    items = [dataset[0], dataset[1]]
    batch = Collator(pad_id=0, max_length=256)(items).batch
    assert batch.denoise_targets[Modality.IMAGE].shape == (2, 3, 64, 64)
    first = json.loads(Path(entry.annotation_path).read_text())[0]["output_image"]
    assert torch.equal(batch.denoise_targets[Modality.IMAGE][0], load_target(Modality.IMAGE, entry.image_dir / first))
    broken = dataclasses.replace(entry, image_dir=entry.image_dir.parent / "nowhere")
    dataset = ConversationDataset("cc3m_dec", broken, None, tokenizer, signal_ids, tiny_model_cfg.encoder,
                                  target_loader=load_target)  # fmt: skip
    assert isinstance(dataset[0], SkippedSample) and dataset[0].path.parent.name == "nowhere"


@pytest.mark.parametrize("entry", [["a", "list"], "a string", 7, None])
def test_a_non_object_entry_is_one_skipped_record_not_a_rejected_file(make_dataset, world, tmp_path, caplog, entry):
    records = json.loads(Path(load_catalog(world)["cc3m_dec"].annotation_path).read_text())
    annotation = tmp_path / "with_junk.json"
    annotation.write_text(json.dumps([records[0], entry, *records[1:]]))
    with caplog.at_level(logging.WARNING, logger="nextgpt.data.datasets"):
        dataset = make_dataset("cc3m_dec", annotation_path=annotation)
    assert len(dataset) == len(records) + 1 and dataset.spec(1) is None
    assert sum("1 of" in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records) == 1
    assert "record must be a JSON object" in caplog.text
    skipped = dataset[1]
    assert isinstance(skipped, SkippedSample) and "record must be a JSON object" in skipped.reason
    assert not isinstance(dataset[0], SkippedSample) and not isinstance(dataset[2], SkippedSample)
    with pytest.raises(BadSampleError, match=r"cc3m_dec\[1\]: malformed record: record must be a JSON object"):
        make_dataset("cc3m_dec", policy="error", annotation_path=annotation)


def test_an_annotation_file_that_is_not_a_list_is_rejected_in_one_line(make_dataset, tmp_path):
    annotation = tmp_path / "object.json"
    annotation.write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="must hold a JSON list of records, got a dict"):
        make_dataset("cc3m_dec", annotation_path=annotation)


def test_legacy_t2x_target_reads_its_embedding_or_is_a_bad_sample(tokenizer, signal_ids, tiny_model_cfg, tmp_path,
                                                                  caption_shapes):  # fmt: skip
    """A released `*_t2x.json` record trains like a NEW one: a signal span and its caption embedding; without the
    embedding file it is skipped under the bad-sample policy."""
    from nextgpt.config import DatasetEntryConfig
    from nextgpt.data.embeddings import save_caption_embedding

    record = {
        "mm_name": "t2x0031.jpg",
        "conversation": [
            {"from": "human", "value": "Show me a wolf.", "input_modality": "text"},
            {"from": "gpt", "value": "Here it is.", "caption": "a wolf", "output_modality": "image"},
        ],
    }
    annotation = tmp_path / "image_t2x.json"
    annotation.write_text(json.dumps([record]))
    entry = DatasetEntryConfig(annotation_path=annotation, caption_embed_dir=tmp_path / "embed")
    args = ("image_instruction", entry, None, tokenizer, signal_ids, tiny_model_cfg.encoder)
    missing = ConversationDataset(*args, caption_embed_shapes=caption_shapes)[0]
    assert isinstance(missing, SkippedSample) and missing.path == tmp_path / "embed" / "t2x0031.jpg.npy"
    with pytest.raises(BadSampleError, match="t2x0031.jpg.npy"):
        ConversationDataset(*args, policy="error", caption_embed_shapes=caption_shapes)[0]
    save_caption_embedding(tmp_path / "embed" / "t2x0031.jpg.npy", torch.ones(caption_shapes[Modality.IMAGE]))
    item = ConversationDataset(*args, caption_embed_shapes=caption_shapes)[0]
    (start,) = item["signal_span_starts"][Modality.IMAGE]
    assert item["input_ids"][start : start + len(signal_ids[Modality.IMAGE])].tolist() == signal_ids[Modality.IMAGE]
    assert item["caption_embeds"][Modality.IMAGE][0].shape == caption_shapes[Modality.IMAGE]
