"""Conversations → token ids with label masking, for every chat template (`nextgpt.llm.templates`).

Rendering of the default `vicuna_v1` (spec §3.3): `SYSTEM USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`,
after BOS; the other templates differ only in the strings and flags of their `ChatTemplate`.
Ids are built segment by segment so that labels line up exactly: only the assistant answers and their
"</s>" are labelled. A placeholder in a user turn becomes its media sentinel (spliced later); in an
assistant turn it becomes that modality's n signal ids, inserted as ids (exactly n, nothing between them).

Segments are cut where whole-string tokenisation has a boundary anyway (before a space, or at a control
id), so the ids equal those of tokenising the rendered string at once; `check_tokenization` verifies it.
Remaining differences: text that contains control-token strings (kept as plain text here, while whole-string
tokenisation would read them as control ids), and tokenizers whose pieces span whitespace.

    example = build_training_example(tokenizer, [Turn("user", "<image>\\nWhat is it?"), Turn("assistant", "A cat.")],
                                     signal_ids)
    prompt_ids = build_generation_prompt(tokenizer, [Turn("user", "Draw a cat.")])  # ends with "ASSISTANT:"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from transformers import PreTrainedTokenizerBase

from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.llm.templates import ChatTemplate, get_template
from nextgpt.llm.tokenizer import ChunkContext, encode_chunk, find_signal_token_ids, split_placeholders

logger = logging.getLogger(__name__)


VICUNA_V1 = get_template("vicuna_v1")
"""The default template (training `--version v1` of the original; its inference used another)."""


@dataclass
class Turn:
    """One message of a conversation; `text` may hold `<image>`/`<video>`/`<audio>` placeholders."""

    role: Literal["user", "assistant"]
    text: str


@dataclass
class Example:
    """A tokenised training conversation: ids and labels of the same length (IGNORE_INDEX = not learned).

    Attributes:
        input_ids: ids with one media sentinel per input group.
        labels: per-id targets.
        media_groups: per sentinel in order, (modality, number of input items summed into it); 1 except where the
            template sums adjacent items of one modality (`vicuna_v0`).
    """

    input_ids: list[int]
    labels: list[int]
    media_groups: list[tuple[Modality, int]] = field(default_factory=list)


@dataclass
class _Segment:
    """A piece of the rendered conversation: text, control ids, or a user-side media group.

    `fresh` text is encoded as a tokenizer call of its own (dummy prefix), as the legacy code encoded each piece.
    """

    text: str = ""
    ids: tuple[int, ...] = ()
    media: Modality | None = None
    count: int = 1
    labelled: bool = False
    fresh: bool = False

    @property
    def is_text(self) -> bool:
        return self.media is None and not self.ids


def _check_turns(turns: list[Turn], last_role: Literal["user", "assistant"]) -> None:
    if not turns:
        raise ValueError("a conversation needs at least one turn, got an empty list")
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            raise ValueError(
                f"turn {index} must have role {expected!r} (conversations start with the user and alternate), "
                f"got {turn.role!r}"
            )
        if not isinstance(turn.text, str):
            raise ValueError(f"turn {index} text must be a string, got {type(turn.text).__name__}")
    if turns[-1].role != last_role:
        purpose = "a training example" if last_role == "assistant" else "a generation prompt"
        raise ValueError(
            f"{purpose} must end with a {last_role!r} turn, got {len(turns)} turns ending with {turns[-1].role!r}"
        )


def _answer_segments(text: str, signal_ids: dict[Modality, list[int]] | None) -> list[_Segment]:
    """An assistant answer: its text, with each placeholder replaced by that modality's signal span (labelled)."""
    segments = []
    for part in split_placeholders(text):
        if not isinstance(part, Modality):
            segments.append(_Segment(text=part, labelled=True))
            continue
        if signal_ids is None or not signal_ids.get(part):
            raise ValueError(
                f"assistant turn asks for {part.value} output but no {part.value} signal tokens are known; "
                "pass signal_ids from nextgpt.llm.tokenizer.signal_token_ids"
            )
        segments.append(_Segment(ids=tuple(signal_ids[part]), labelled=True))
    return segments


def _media_groups(parts: list[str | Modality], template: ChatTemplate) -> list[tuple[Modality, int]]:
    """The user turn's media in order; runs of one modality become one group when the template sums them."""
    groups: list[tuple[Modality, int]] = []
    for part in parts:
        if not isinstance(part, Modality):
            continue
        if template.sum_adjacent_media and groups and groups[-1][0] is part:
            groups[-1] = (part, groups[-1][1] + 1)
        else:
            groups.append((part, 1))
    return groups


def _wrapped_media(modality: Modality, count: int, wrap_ids: tuple[int, int] | None) -> list[_Segment]:
    media = _Segment(media=modality, count=count)
    if wrap_ids is None:
        return [media]
    return [_Segment(ids=(wrap_ids[0],)), media, _Segment(ids=(wrap_ids[1],))]


def _media_first_content(text: str, template: ChatTemplate) -> tuple[str, list[tuple[Modality, int]]]:
    """A user turn in the legacy layout: its text without placeholders (stripped), and its media groups in order."""
    parts = split_placeholders(text)
    return "".join(p for p in parts if not isinstance(p, Modality)).strip(), _media_groups(parts, template)


def _user_segments(template: ChatTemplate, prefix: str, text: str, wrap_ids: tuple[int, int] | None) -> list[_Segment]:
    """One user turn: role prefix, content (media in place, or first as the legacy layout), role suffix."""
    if not template.media_first:
        segments = [_Segment(text=prefix)]
        for part in split_placeholders(text):
            if isinstance(part, Modality):
                segments.extend(_wrapped_media(part, 1, wrap_ids))
            else:
                segments.append(_Segment(text=part))
        return [*segments, _Segment(text=template.user_suffix)]
    # Legacy layout: "### Human: <Img>[media]</Img> {text}\n### Assistant:"; the text after the media is a tokenizer
    # call of its own (legacy code), so it starts with the dummy prefix and without the space.
    plain_text, groups = _media_first_content(text, template)
    if not groups:
        return [_Segment(text=prefix + plain_text + template.user_suffix)]
    segments = [_Segment(text=prefix.rstrip(" "))]
    for modality, count in groups:
        segments.extend(_wrapped_media(modality, count, wrap_ids))
    return [*segments, _Segment(text=plain_text + template.user_suffix, fresh=True)]


def _build_segments(
    template: ChatTemplate,
    turns: list[Turn],
    tokenizer: PreTrainedTokenizerBase,
    signal_ids: dict[Modality, list[int]] | None,
) -> list[_Segment]:
    """Render the conversation (after BOS) as segments; labelled = part of an assistant answer.

    A final user turn ends with the user suffix (the generation prompt); a final assistant turn with its closing.
    """
    wrap_ids = _wrap_ids(tokenizer, template)
    segments = [_Segment(text=template.system)]
    for index, turn in enumerate(turns):
        if turn.role == "user":
            if index and template.bos_per_turn:
                segments.append(_Segment(ids=(tokenizer.bos_token_id,)))
            prefix = template.first_user_prefix if index == 0 else template.user_prefix
            segments.extend(_user_segments(template, prefix, turn.text, wrap_ids))
        else:
            segments.append(_Segment(text=template.assistant_prefix, labelled=True))
            segments.extend(_answer_segments(turn.text, signal_ids))
            segments.append(_Segment(text=template.assistant_suffix, labelled=True))
            if template.answer_eos:
                segments.append(_Segment(ids=(tokenizer.eos_token_id,), labelled=True))
    return segments


def _wrap_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> tuple[int, int] | None:
    if template.media_wrap is None:
        return None
    ids = tokenizer.convert_tokens_to_ids(list(template.media_wrap))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(
            f"template {template.name} wraps media in {template.media_wrap} but the tokenizer lacks them; load it "
            "with nextgpt.llm.tokenizer.load_tokenizer and the same model.llm.template"
        )
    return ids[0], ids[1]


def _merge_text(segments: list[_Segment]) -> list[_Segment]:
    """Join neighbouring text segments with the same label, so text is cut only where labels change."""
    merged: list[_Segment] = []
    for segment in segments:
        if segment.is_text and not segment.text:
            continue
        previous = merged[-1] if merged else None
        if (
            previous
            and segment.is_text
            and previous.is_text
            and previous.labelled == segment.labelled
            and not segment.fresh
        ):
            merged[-1] = _Segment(text=previous.text + segment.text, labelled=segment.labelled, fresh=previous.fresh)
        else:
            merged.append(segment)
    return merged


def _encode_segments(tokenizer: PreTrainedTokenizerBase, segments: list[_Segment]) -> Example:
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the chat templates need a LLaMA-style tokenizer")
    example = Example(input_ids=[tokenizer.bos_token_id], labels=[IGNORE_INDEX])
    follows: ChunkContext = "start"
    for segment in _merge_text(segments):
        if segment.media is not None:
            ids, follows = [SENTINEL_IDS[segment.media]], "special"
            example.media_groups.append((segment.media, segment.count))
        elif segment.ids:
            ids, follows = list(segment.ids), "special"
        else:
            ids, follows = encode_chunk(tokenizer, segment.text, "start" if segment.fresh else follows), "text"
        example.input_ids.extend(ids)
        example.labels.extend(ids if segment.labelled else [IGNORE_INDEX] * len(ids))
    return example


def _legacy_prompt(
    template: ChatTemplate,
    turns: list[Turn],
    tokenizer: PreTrainedTokenizerBase,
    signal_ids: dict[Modality, list[int]] | None,
) -> Example:
    """The legacy demo's generation prompt (`vicuna_v0`), token for token.

    That demo built one string — `### Human: <Image>p</Image>  {q}` for the new turn (media first, then a space and
    the text), `### Human: <Image>p</Image> {q}\n### Assistant: {a}\n###` and ` Human: …` for earlier ones — cut it
    at the media tags, and encoded every text piece as its own tokenizer call behind a fresh BOS; each media piece
    became `<Img>` + the summed projected items + `</Img>`. Earlier answers keep their signal ids.
    """
    wrap_ids = _wrap_ids(tokenizer, template)
    pieces: list[list[_Segment]] = [[]]
    last = len(turns) - 1
    for index, turn in enumerate(turns):
        if turn.role == "assistant":
            pieces[-1].append(_Segment(text=template.assistant_prefix))
            pieces[-1].extend(_answer_segments(turn.text, signal_ids))
            pieces[-1].append(_Segment(text=template.assistant_suffix))
            continue
        plain_text, groups = _media_first_content(turn.text, template)
        lead = " " if index == last else ""  # the new turn's text was appended as f" {text}"
        pieces[-1].append(_Segment(text=(template.first_user_prefix if index == 0 else template.user_prefix)))
        if groups:
            pieces[-1][-1] = _Segment(text=pieces[-1][-1].text.rstrip(" "))  # the cut at " <" takes the space
            for modality, count in groups:
                pieces.append(_wrapped_media(modality, count, wrap_ids))
            pieces.append([_Segment(text=lead + plain_text)])
        else:
            pieces[-1].append(_Segment(text=lead + plain_text))
        pieces[-1].append(_Segment(text=template.user_suffix))
    segments: list[_Segment] = []
    for piece in pieces:
        if not piece:
            continue
        if piece[0].media is None and not piece[0].ids and segments:  # a text piece after media: fresh BOS
            segments.append(_Segment(ids=(tokenizer.bos_token_id,)))
        if piece[0].is_text:
            piece = [_Segment(text=piece[0].text, fresh=True), *piece[1:]]
        segments.extend(piece)
    return _encode_segments(tokenizer, segments)


def _resolve(template: ChatTemplate | str | None) -> ChatTemplate:
    if template is None:
        return VICUNA_V1
    return get_template(template) if isinstance(template, str) else template


def render_conversation(turns: list[Turn], template: ChatTemplate | str | None = None) -> str:
    """Render turns as the template's prompt string (no BOS; placeholders left in place; control ids as text).

    Args:
        turns: alternating user/assistant turns starting with the user; ending with a user turn renders the
            generation prompt (ending with the user suffix, e.g. "ASSISTANT:").
        template: the chat template or its name (default `vicuna_v1`).

    Returns:
        E.g. `"A chat … questions. USER: Hi ASSISTANT: Hello!</s>USER: Draw a cat ASSISTANT:"`.

    Raises:
        ValueError: bad turn order.
    """
    _check_turns(turns, turns[-1].role if turns else "user")
    template = _resolve(template)
    text = template.system
    for index, turn in enumerate(turns):
        if turn.role == "user":
            if index and template.bos_per_turn:
                text += "<s>"
            prefix = template.first_user_prefix if index == 0 else template.user_prefix
            text += f"{prefix}{turn.text}{template.user_suffix}"
        else:
            eos = "</s>" if template.answer_eos else ""
            text += f"{template.assistant_prefix}{turn.text}{template.assistant_suffix}{eos}"
    return text


def build_training_example(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    signal_ids: dict[Modality, list[int]],
    template: ChatTemplate | str | None = None,
) -> Example:
    """Tokenise a conversation for training, labelling only the assistant answers and what closes them.

    Args:
        tokenizer: the LLM tokenizer (from `load_tokenizer`).
        turns: alternating turns, starting with the user and ending with the assistant.
        signal_ids: signal spans per modality (`signal_token_ids`); an assistant placeholder becomes one.
        template: the chat template or its name (default `vicuna_v1`).

    Returns:
        Example whose `input_ids` start with BOS and hold a sentinel per user-side placeholder; `labels` are
        IGNORE_INDEX except on assistant text, signal ids and the answer's closing (EOS, or legacy `\n###`).

    Raises:
        ValueError: bad turn order, or an assistant placeholder for a modality without signal ids.
    """
    _check_turns(turns, "assistant")
    template = _resolve(template)
    return _encode_segments(tokenizer, _build_segments(template, turns, tokenizer, signal_ids))


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    signal_ids: dict[Modality, list[int]] | None = None,
    template: ChatTemplate | str | None = None,
) -> Example:
    """Tokenise a conversation up to the user suffix for the model to continue, with its media groups.

    Earlier assistant turns are rendered as in training (answers, signal ids, closing); `vicuna_v0` follows the
    legacy demo's piecewise prompt (see `_legacy_prompt`).

    Args:
        tokenizer: the LLM tokenizer.
        turns: alternating turns, starting and ending with the user.
        signal_ids: signal spans per modality; None reads `<m_00>`-style tokens from the tokenizer.
        template: the chat template or its name (default `vicuna_v1`).

    Returns:
        Example (labels all IGNORE_INDEX) whose ids start with BOS and hold one sentinel per media group.

    Raises:
        ValueError: bad turn order.
    """
    _check_turns(turns, "user")
    template = _resolve(template)
    if signal_ids is None:
        signal_ids = find_signal_token_ids(tokenizer)
    if template.legacy_prompt_pieces:
        example = _legacy_prompt(template, turns, tokenizer, signal_ids)
    else:
        example = _encode_segments(tokenizer, _build_segments(template, turns, tokenizer, signal_ids))
    example.labels = [IGNORE_INDEX] * len(example.input_ids)
    return example


def build_generation_prompt(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    signal_ids: dict[Modality, list[int]] | None = None,
    template: ChatTemplate | str | None = None,
) -> list[int]:
    """The ids of `build_prompt` (one sentinel per media group)."""
    return build_prompt(tokenizer, turns, signal_ids, template).input_ids


def system_prefix_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str | None = None) -> list[int]:
    """The ids every rendered conversation opens with: BOS, the system prompt and the first user role tag.

    Text is cut before the space that ends the role tag ("USER:"), where whole-string tokenisation has a boundary
    anyway, so for sentencepiece vocabularies these ids are a prefix of every `build_training_example` /
    `build_prompt`. Shared-prefix reuse (`nextgpt.llm.prefix_cache`) still checks each batch against them.

    Args:
        tokenizer: the LLM tokenizer.
        template: the chat template or its name (default `vicuna_v1`).

    Returns:
        E.g. `[BOS, ...ids of "A chat ... questions. USER:"]`.

    Raises:
        ValueError: the tokenizer has no BOS token.
    """
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the chat templates need a LLaMA-style tokenizer")
    template = _resolve(template)
    text = (template.system + template.first_user_prefix).rstrip(" ")
    return [tokenizer.bos_token_id, *encode_chunk(tokenizer, text, "start")]


def check_tokenization(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    example: Example | list[int],
    signal_ids: dict[Modality, list[int]] | None = None,
    template: ChatTemplate | str | None = None,
) -> bool:
    """Whether segment-built ids equal the tokenisation of the whole rendered conversation at once.

    The reference renders control ids as their token strings and each user-side placeholder as the unk
    token (one control id standing in for the media) and tokenises that string with special tokens
    recognised; the built ids are compared with their sentinels read as that stand-in. Text that contains
    control-token strings therefore reports a mismatch (the built ids keep such text plain, on purpose).

    Args:
        tokenizer: the LLM tokenizer.
        turns: the conversation the ids were built from (ending with the assistant for an Example, with
            the user for a generation prompt).
        example: an Example from `build_training_example` or ids from `build_generation_prompt`.
        signal_ids: as passed when building; None reads them from the tokenizer.
        template: as passed when building.

    Returns:
        True when the ids (and, for an Example, the label count) match.

    Raises:
        ValueError: bad turn order.
    """
    _check_turns(turns, turns[-1].role if turns else "user")
    ids = example.input_ids if isinstance(example, Example) else list(example)
    if isinstance(example, Example) and len(example.labels) != len(ids):
        return False
    if signal_ids is None:
        signal_ids = find_signal_token_ids(tokenizer)
    segments = _build_segments(_resolve(template), turns, tokenizer, signal_ids)
    stand_in = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.bos_token
    stand_in_id = tokenizer.convert_tokens_to_ids(stand_in)
    pieces = []
    for segment in segments:
        if segment.media is not None:
            pieces.append(stand_in)
        elif segment.ids:
            pieces.append("".join(tokenizer.convert_ids_to_tokens(list(segment.ids))))
        else:
            pieces.append(segment.text)
    reference = [tokenizer.bos_token_id] + tokenizer.encode(
        "".join(pieces), add_special_tokens=False, split_special_tokens=False
    )
    sentinels = set(SENTINEL_IDS.values())
    return [stand_in_id if i in sentinels else i for i in ids] == reference
