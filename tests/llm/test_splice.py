"""splice_media: positions, labels, padding, several modalities, errors and gradients."""

from __future__ import annotations

import logging

import pytest
import torch

from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.llm.splice import SPLICE_PAD_ID, splice_media

IMG, VID, AUD = SENTINEL_IDS[Modality.IMAGE], SENTINEL_IDS[Modality.VIDEO], SENTINEL_IDS[Modality.AUDIO]
DIM = 6


class RecordingEmbedding(torch.nn.Embedding):
    """An embedding table that remembers every id it was asked for."""

    def __init__(self) -> None:
        super().__init__(50, DIM)
        self.seen: list[int] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.extend(ids.flatten().tolist())
        return super().forward(ids)


def reference_splice(ids: list[int], media: dict[int, list[torch.Tensor]], embed: torch.nn.Embedding) -> torch.Tensor:
    """Per-token loop version of one unpadded row; `media` maps a sentinel to its remaining items (consumed)."""
    rows = []
    for token in ids:
        rows.append(media[token].pop(0) if token < 0 else embed.weight[token : token + 1])
    return torch.cat(rows)


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids = torch.tensor(
        [
            [3, IMG, 4, AUD, 5, VID, 6],
            [7, VID, 8, IMG, 0, 0, 0],
            [9, 10, 11, 0, 0, 0, 0],
        ]
    )
    attention_mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    labels = input_ids.clone().masked_fill(input_ids < 0, IGNORE_INDEX).masked_fill(attention_mask == 0, 11)
    return input_ids, attention_mask, labels


def make_media() -> dict[Modality, torch.Tensor]:
    return {
        Modality.IMAGE: torch.randn(2, 3, DIM, requires_grad=True),
        Modality.VIDEO: torch.randn(2, 2, DIM, requires_grad=True),
        Modality.AUDIO: torch.randn(1, 1, DIM, requires_grad=True),
    }


def test_splice_matches_per_token_reference() -> None:
    embed = RecordingEmbedding()
    input_ids, attention_mask, labels = make_batch()
    media = make_media()
    out = splice_media(input_ids, attention_mask, labels, embed, media)

    # Row 0: 4 text + image(3) + audio(1) + video(2) = 10 rows; row 1: 2 text + video(2) + image(3) = 7.
    assert out.inputs_embeds.shape == (3, 10, DIM)
    assert out.attention_mask.tolist() == [[1] * 10, [1] * 7 + [0] * 3, [1] * 3 + [0] * 7]
    queues = {SENTINEL_IDS[m]: list(t.unbind(0)) for m, t in media.items()}
    for row, length in enumerate((10, 7, 3)):
        ids = input_ids[row][attention_mask[row].bool()].tolist()
        expected = reference_splice(ids, queues, embed)
        torch.testing.assert_close(out.inputs_embeds[row, :length], expected)
        assert out.inputs_embeds[row, length:].abs().sum() == 0
    assert all(len(q) == 0 for q in queues.values())
    assert min(embed.seen) >= 0


def test_token_ids_and_labels_mark_media_rows_and_padding() -> None:
    input_ids, attention_mask, labels = make_batch()
    out = splice_media(input_ids, attention_mask, labels, RecordingEmbedding(), make_media())
    p = SPLICE_PAD_ID
    assert out.token_ids.tolist() == [
        [3, IMG, IMG, IMG, 4, AUD, 5, VID, VID, 6],
        [7, VID, VID, 8, IMG, IMG, IMG, p, p, p],
        [9, 10, 11, p, p, p, p, p, p, p],
    ]
    expected_labels = out.token_ids.masked_fill(out.token_ids < 0, IGNORE_INDEX)
    assert out.labels is not None and out.labels.tolist() == expected_labels.tolist()


def test_items_are_consumed_row_major() -> None:
    input_ids = torch.tensor([[IMG, 1, IMG], [2, IMG, 3]])
    images = torch.arange(3, dtype=torch.float).view(3, 1, 1).expand(3, 1, DIM).clone()
    out = splice_media(input_ids, torch.ones_like(input_ids), None, RecordingEmbedding(), {Modality.IMAGE: images})
    assert out.labels is None
    assert out.inputs_embeds[0, 0, 0] == 0 and out.inputs_embeds[0, 2, 0] == 1 and out.inputs_embeds[1, 1, 0] == 2


def test_text_only_batch_trims_padding() -> None:
    embed = RecordingEmbedding()
    input_ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    attention_mask = (input_ids > 0).long()
    out = splice_media(input_ids, attention_mask, input_ids.clone(), embed, {})
    assert out.inputs_embeds.shape == (2, 3, DIM)
    torch.testing.assert_close(out.inputs_embeds[0], embed.weight[[1, 2, 3]])
    torch.testing.assert_close(out.inputs_embeds[1, :2], embed.weight[[4, 5]])
    assert out.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out.labels is not None and out.labels.tolist() == [[1, 2, 3], [4, 5, IGNORE_INDEX]]


def test_left_padding_becomes_right_padding() -> None:
    input_ids = torch.tensor([[0, 0, 1, IMG], [2, 3, 4, 5]])
    attention_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = splice_media(input_ids, attention_mask, None, RecordingEmbedding(), {Modality.IMAGE: torch.ones(1, 2, DIM)})
    assert out.token_ids.tolist() == [[1, IMG, IMG, SPLICE_PAD_ID], [2, 3, 4, 5]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_gradients_flow_into_media_and_embeddings() -> None:
    embed = RecordingEmbedding()
    input_ids, attention_mask, labels = make_batch()
    media = make_media()
    weights = torch.randn(3, 10, DIM)
    out = splice_media(input_ids, attention_mask, labels, embed, media)
    (out.inputs_embeds * weights).sum().backward()
    # Image item 0 fills row 0 columns 1..3, image item 1 fills row 1 columns 4..6.
    torch.testing.assert_close(media[Modality.IMAGE].grad[0], weights[0, 1:4])
    torch.testing.assert_close(media[Modality.IMAGE].grad[1], weights[1, 4:7])
    torch.testing.assert_close(media[Modality.AUDIO].grad[0], weights[0, 5:6])
    assert embed.weight.grad is not None and embed.weight.grad[3].abs().sum() > 0


def test_media_is_cast_to_embedding_dtype() -> None:
    embed = RecordingEmbedding().to(torch.bfloat16)
    input_ids = torch.tensor([[1, AUD]])
    out = splice_media(input_ids, torch.ones_like(input_ids), None, embed, {Modality.AUDIO: torch.randn(1, 8, DIM)})
    assert out.inputs_embeds.dtype == torch.bfloat16 and out.inputs_embeds.shape == (1, 9, DIM)


def test_count_mismatch_names_modality_and_counts() -> None:
    input_ids, attention_mask, labels = make_batch()
    media = make_media()
    media[Modality.VIDEO] = torch.randn(3, 2, DIM)
    with pytest.raises(ValueError, match=r"video: the batch has 2 video placeholder\(s\) but 3 video item"):
        splice_media(input_ids, attention_mask, labels, RecordingEmbedding(), media)
    text_only = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match=r"audio: the batch has 0 audio placeholder\(s\) but 1 audio item"):
        splice_media(
            text_only, torch.ones_like(text_only), None, RecordingEmbedding(), {Modality.AUDIO: media[Modality.AUDIO]}
        )


def test_bad_inputs_raise() -> None:
    embed = RecordingEmbedding()
    ids = torch.tensor([[1, -7, 2]])
    with pytest.raises(ValueError, match="negative id -7"):
        splice_media(ids, torch.ones_like(ids), None, embed, {})
    ids = torch.tensor([[1, IMG]])
    with pytest.raises(ValueError, match="width 5 but the LLM embeddings have 6"):
        splice_media(ids, torch.ones_like(ids), None, embed, {Modality.IMAGE: torch.randn(1, 2, 5)})
    with pytest.raises(ValueError, match=r"\(N, k, D\)"):
        splice_media(ids, torch.ones_like(ids), None, embed, {Modality.IMAGE: torch.randn(1, DIM)})
    with pytest.raises(ValueError, match="labels shaped like input_ids"):
        splice_media(ids, torch.ones_like(ids), torch.ones(1, 3, dtype=torch.long), embed, {})


def test_max_length_cuts_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    ids = torch.tensor([[1, IMG, 2]])
    with caplog.at_level(logging.WARNING, logger="nextgpt.llm.splice"):
        out = splice_media(
            ids,
            torch.ones_like(ids),
            ids.clone(),
            RecordingEmbedding(),
            {Modality.IMAGE: torch.randn(1, 4, DIM)},
            max_length=4,
        )
    assert out.inputs_embeds.shape == (1, 4, DIM) and out.token_ids.tolist() == [[1, IMG, IMG, IMG]]
    assert "longer than max_length=4" in caplog.text


@pytest.mark.gpu
def test_ids_on_the_host_splice_for_cuda_as_on_the_gpu_without_waiting_for_it() -> None:
    embed = torch.nn.Embedding(50, DIM).cuda()
    input_ids, attention_mask, labels = make_batch()
    media = {m: t.detach().cuda() for m, t in make_media().items()}
    expected = splice_media(input_ids.cuda(), attention_mask.cuda(), labels.cuda(), embed, media)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU raises
    try:
        out = splice_media(input_ids, attention_mask, labels, embed, media, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for name in ("inputs_embeds", "attention_mask", "labels", "token_ids"):
        assert getattr(out, name).device.type == "cuda"
        assert torch.equal(getattr(out, name), getattr(expected, name)), name
    assert expected.host_token_ids is None and torch.equal(out.host_token_ids, expected.token_ids.cpu())
