"""Sequence packing (`data.packing`): the collator fills rows first-fit, and a packed batch trains exactly like the
padded batch of the same samples (loss, per-sample logits, signal conditioning, gradients), with no attention across
sample boundaries."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from batch_helpers import (
    AUD,
    IMG,
    STAGE_1,
    STAGE_2,
    assert_close_to_float64,
    build_model,
    collate,
    float64_batch,
    float64_step,
    logits_by_sample,
    make_items,
    run_step,
    signal_embeds_by_sample,
)
from numerics import assert_rounding_close, float64_copy

import nextgpt.llm.varlen
from nextgpt.data.layout import layout_from_positions, prefix_gather_index
from nextgpt.data.packing import pack_first_fit
from nextgpt.llm.conversation import Turn
from nextgpt.llm.varlen import varlen_kwargs


def test_pack_first_fit_places_longest_first_into_the_first_row_with_room():
    assert pack_first_fit([120, 30, 200, 90], capacity=256) == [[2, 1], [0, 3]]
    assert pack_first_fit([5, 5, 5], capacity=5) == [[0], [1], [2]]
    assert pack_first_fit([], capacity=8) == []
    with pytest.raises(ValueError, match="longer than the packing capacity 256"):
        pack_first_fit([100, 300], capacity=256)


@pytest.fixture(scope="module")
def group_model(tiny_root, tiny_cfg_path):
    """8 LLM rows per media item, so splicing changes lengths a lot."""
    return build_model(tiny_root, tiny_cfg_path, 2, "model.input_projector.type=group")


def test_collator_packs_samples_into_rows_with_restarting_positions(group_model):
    model = group_model
    items = make_items(model, STAGE_1 + STAGE_2)
    tokens_per_media = model.input_projector.num_tokens
    padded = collate(model, items, packing=False, max_length=384)
    packed = collate(model, items, packing=True, max_length=384)
    assert padded.batch.position_ids is None
    batch = packed.batch
    by_name = {item["dataset"]: item for item in items}
    assert sorted(packed.datasets) == sorted(by_name) and packed.num_samples == len(items)
    assert batch.input_ids.shape[0] < len(items)
    samples = iter(packed.datasets)
    for row in range(batch.input_ids.shape[0]):
        valid = batch.attention_mask[row].bool()
        ids, positions, labels = batch.input_ids[row][valid], batch.position_ids[row][valid], batch.labels[row][valid]
        assert int(torch.where(ids < 0, tokens_per_media, 1).sum()) <= 384  # the row fits after splicing
        assert not valid[int(valid.sum()) :].any()  # right padding
        starts = [*(positions == 0).nonzero().flatten().tolist(), len(ids)]
        for start, end in pairwise(starts):
            item = by_name[next(samples)]
            assert torch.equal(ids[start:end], item["input_ids"])
            assert torch.equal(labels[start:end], item["labels"])
            assert torch.equal(positions[start:end], torch.arange(end - start))
    assert next(samples, None) is None
    # Media and caption embeddings are listed in packed order, like the spans the model will find.
    for modality in (IMG, AUD):
        expected = [f for name in packed.datasets for f in by_name[name]["media_features"].get(modality, [])]
        assert torch.equal(batch.media_features[modality], torch.stack(expected))
        captions = [c for name in packed.datasets for c in by_name[name]["caption_embeds"].get(modality, [])]
        assert torch.equal(batch.caption_embeds[modality], torch.stack(captions))


@pytest.mark.numerics
@pytest.mark.parametrize("projector", ["linear", "group"])
def test_packed_batch_trains_like_the_padded_batch(tiny_root, tiny_cfg_path, projector, monkeypatch):
    model = build_model(tiny_root, tiny_cfg_path, 2, f"model.input_projector.type={projector}")
    items = make_items(model, STAGE_1 + STAGE_2)
    padded, packed = collate(model, items, packing=False), collate(model, items, packing=True)
    assert packed.batch.input_ids.shape[0] < padded.batch.input_ids.shape[0]
    segments = []  # both passes attend segment by segment (samples and padding runs) in every layer
    reference = nextgpt.llm.varlen._reference
    monkeypatch.setattr(nextgpt.llm.varlen, "_reference", lambda *a: segments.append(len(a[3]) - 1) or reference(*a))
    plain = run_step(model, padded.batch)
    pack = run_step(model, packed.batch)
    layers = model.llm.config.num_hidden_layers
    assert len(segments) == 2 * layers
    # Padded: every row is one sample, plus a padding run in all rows but the longest; packed: fewer padding runs.
    assert segments[0] >= len(items) and len(items) <= segments[layers] < segments[0]

    assert set(pack.out.loss_terms) == set(plain.out.loss_terms) == {"ce", "l2_image", "l2_video", "l2_audio"}
    assert len(signal_embeds_by_sample(plain.out, padded.datasets, items)) == 5
    assert {n.split(".")[0] for n in plain.grads} == {"input_projector", "output_projectors", "llm"}
    # Both float32 passes within float32 rounding of the exact (float64) padded pass: see tests/numerics.py.
    exact = float64_step(model, padded.batch)
    k = model.input_projector.num_tokens
    assert_close_to_float64("padded", plain, padded, exact, padded, items, k)
    assert_close_to_float64("packed", pack, packed, exact, padded, items, k)


@pytest.mark.numerics
def test_packed_samples_do_not_attend_to_each_other(group_model):
    model = group_model
    first = [Turn("user", "<image>\nDescribe the picture."), Turn("assistant", "A red circle on the left.")]
    second = [Turn("user", "Make a sound of rain."), Turn("assistant", "Sure <audio>")]
    changed = [Turn("user", "Play a loud thunderstorm, please!"), Turn("assistant", "Here you go: <audio>")]
    k = model.input_projector.num_tokens
    logits, exact = [], None
    for conversation in (second, changed):
        collated = collate(model, make_items(model, [first, conversation]), packing=True)
        assert collated.batch.input_ids.shape[0] == 1  # both samples share the row
        with torch.no_grad():
            out = model(collated.batch)
            if exact is None:  # the first sample's exact logits, next to the first neighbour
                out64 = float64_copy(model)(float64_batch(collated.batch))
                exact = logits_by_sample(out64, collated.batch, collated.datasets, k)["s0"]
        logits.append(logits_by_sample(out, collated.batch, collated.datasets, k))
    # Next to either neighbour, the first sample's logits are its exact ones up to float32 rounding (tests/numerics.py).
    for neighbour in logits:
        assert_rounding_close(neighbour["s0"], exact, len(exact), "first sample's logits")
    assert logits[0]["s1"].shape != logits[1]["s1"].shape or not torch.allclose(logits[0]["s1"], logits[1]["s1"])


def test_layout_opens_a_segment_at_every_position_zero():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    layout = layout_from_positions(positions)
    assert layout.cu_seqlens_q.tolist() == [0, 3, 5, 6, 10] and layout.cu_seqlens_q.dtype == torch.int32
    kwargs = varlen_kwargs(layout)
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4 and kwargs["prefix_index"] is None
    # With a 2-token shared prefix, each sample's keys are the prefix's then its own (indices into prefix + row).
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    assert prefix_gather_index(cu, 2).tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6]
    prefixed = layout_from_positions(torch.tensor([[0, 1, 0, 1, 2]]), prefix_ids=[1, 7])
    assert prefixed.cu_seqlens_k.tolist() == [0, 4, 9] and prefixed.max_seqlen_k == 5
    assert prefixed.position_ids.tolist() == [[2, 3, 2, 3, 4]]  # after the prefix


def test_collator_layout_counts_media_rows_and_padding_runs():
    ids = torch.tensor([[5, -200, 6, 7], [8, 9, 0, 0]])  # row 0: a media item of 3 rows; row 1 padded
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    from nextgpt.constants import SENTINEL_IDS, Modality
    from nextgpt.data.layout import build_layout

    ids[0, 1] = SENTINEL_IDS[Modality.IMAGE]
    layout = build_layout(ids, mask, None, tokens_per_media=3)
    assert (layout.rows, layout.width) == (2, 6)
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 2, 3]]
    assert layout.cu_seqlens_q.tolist() == [0, 6, 8, 12] and layout.max_seqlen_q == 6


@pytest.mark.gpu
def test_flash_varlen_kernel_matches_the_per_sample_reference_on_cuda():
    from nextgpt.llm.varlen import _flash, _reference

    generator = torch.Generator(device="cuda").manual_seed(0)
    positions = torch.cat([torch.arange(n) for n in (37, 300, 5, 129)]).unsqueeze(0)
    cu = layout_from_positions(positions).cu_seqlens_q.cuda()
    q, k, v = (torch.randn(1, 8, positions.shape[1], 64, device="cuda", generator=generator) for _ in range(3))
    expected = _reference(q, k, v, cu, cu, 0.125)
    q16, k16, v16 = (x.to(torch.bfloat16).requires_grad_() for x in (q, k, v))
    out = _flash(q16, k16, v16, cu, cu, 300, 300, 0.125)
    assert out.shape == expected.shape
    assert torch.allclose(out.float(), expected, atol=2e-2)
    out.float().square().sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q16, k16, v16))


@pytest.mark.gpu
def test_flash_varlen_kernel_with_a_shared_prefix_matches_the_reference_on_cuda():
    from nextgpt.llm.varlen import _flash, _reference

    generator = torch.Generator(device="cuda").manual_seed(0)
    positions = torch.cat([torch.arange(n) for n in (37, 300, 5, 129)]).unsqueeze(0)
    num_prefix, length = 32, positions.shape[1]
    layout = layout_from_positions(positions, prefix_ids=range(num_prefix)).to("cuda")
    cu, cu_k, index = layout.cu_seqlens_q, layout.cu_seqlens_k, layout.prefix_index
    q, k, v = (torch.randn(1, 8, length, 64, device="cuda", generator=generator) for _ in range(3))
    pk, pv = (torch.randn(1, 8, num_prefix, 64, device="cuda", generator=generator) for _ in range(2))
    keys, values = (torch.cat([p, x], dim=2).index_select(2, index) for p, x in ((pk, k), (pv, v)))
    expected = _reference(q, keys, values, cu, cu_k, 0.125)
    out = _flash(*(x.to(torch.bfloat16) for x in (q, keys, values)), cu, cu_k, 300, 300 + num_prefix, 0.125)
    assert torch.allclose(out.float(), expected, atol=2e-2)


def test_packed_forward_leaves_mask_building_to_the_boundaries(group_model, monkeypatch):
    """Transformers never derives a mask from the packed positions (a (T, T) block mask, and on CUDA a host read that
    waits for the GPU in every training forward): the boundaries replace it."""
    import transformers.masking_utils as masking_utils

    def refuse(*args, **kwargs):
        raise AssertionError("transformers built a mask for a call with sample boundaries")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", refuse)
    model = group_model
    first = [Turn("user", "<image>\nDescribe the picture."), Turn("assistant", "A red circle on the left.")]
    second = [Turn("user", "Make a sound of rain."), Turn("assistant", "Sure <audio>")]
    collated = collate(model, make_items(model, [first, second]), packing=True)
    with torch.no_grad():
        out = model(collated.batch)
    assert torch.isfinite(out.loss)
    mask = varlen_kwargs(collated.batch.layout)["attention_mask"]
    assert mask.ndim == 4 and mask.numel() == 0
