"""The Vicuna v1 conversation template, shared by training and inference, with label masking.

Rendering (spec §3.3): `SYSTEM USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`, after BOS.
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
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.llm.tokenizer import ChunkContext, encode_chunk, find_signal_token_ids, split_placeholders

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversationTemplate:
    """A two-separator chat template (FastChat style TWO)."""

    system: str
    user_role: str
    assistant_role: str
    sep: str
    """Between the system prompt and the first turn, and after each user turn."""
    sep2: str
    """After each assistant turn (the EOS token's text)."""


VICUNA_V1 = ConversationTemplate(
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    user_role="USER",
    assistant_role="ASSISTANT",
    sep=" ",
    sep2="</s>",
)
"""The one template of the project (training `--version v1` of the original; its inference used another)."""


@dataclass
class Turn:
    """One message of a conversation; `text` may hold `<image>`/`<video>`/`<audio>` placeholders."""

    role: Literal["user", "assistant"]
    text: str


@dataclass
class Example:
    """A tokenised training conversation: ids and labels of the same length (IGNORE_INDEX = not learned)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class _Segment:
    """A piece of the rendered conversation: text, control ids, or a user-side media placeholder."""

    text: str = ""
    ids: tuple[int, ...] = ()
    media: Modality | None = None
    labelled: bool = False

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


def _assistant_segments(text: str, signal_ids: dict[Modality, list[int]] | None) -> list[_Segment]:
    segments = [_Segment(text=VICUNA_V1.sep, labelled=True)]
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


def _build_segments(turns: list[Turn], eos_id: int, signal_ids: dict[Modality, list[int]] | None) -> list[_Segment]:
    """Render the conversation (after BOS) as segments; labelled = part of an assistant answer.

    A final user turn ends with "ASSISTANT:" (the generation prompt); a final assistant turn with its EOS.
    """
    template = VICUNA_V1
    segments = [_Segment(text=template.system + template.sep)]
    for turn in turns:
        if turn.role == "user":
            segments.append(_Segment(text=f"{template.user_role}:{template.sep}"))
            for part in split_placeholders(turn.text):
                segments.append(_Segment(media=part) if isinstance(part, Modality) else _Segment(text=part))
            segments.append(_Segment(text=f"{template.sep}{template.assistant_role}:"))
        else:
            segments.extend(_assistant_segments(turn.text, signal_ids))
            segments.append(_Segment(ids=(eos_id,), labelled=True))
    return segments


def _merge_text(segments: list[_Segment]) -> list[_Segment]:
    """Join neighbouring text segments with the same label, so text is cut only where labels change."""
    merged: list[_Segment] = []
    for segment in segments:
        if segment.is_text and not segment.text:
            continue
        previous = merged[-1] if merged else None
        if previous and segment.is_text and previous.is_text and previous.labelled == segment.labelled:
            merged[-1] = _Segment(text=previous.text + segment.text, labelled=segment.labelled)
        else:
            merged.append(segment)
    return merged


def _encode_segments(tokenizer: PreTrainedTokenizerBase, segments: list[_Segment]) -> Example:
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the Vicuna template needs a LLaMA-style tokenizer")
    input_ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    follows: ChunkContext = "start"
    for segment in _merge_text(segments):
        if segment.media is not None:
            ids, follows = [SENTINEL_IDS[segment.media]], "special"
        elif segment.ids:
            ids, follows = list(segment.ids), "special"
        else:
            ids, follows = encode_chunk(tokenizer, segment.text, follows), "text"
        input_ids.extend(ids)
        labels.extend(ids if segment.labelled else [IGNORE_INDEX] * len(ids))
    return Example(input_ids=input_ids, labels=labels)


def render_conversation(turns: list[Turn]) -> str:
    """Render turns as the Vicuna v1 prompt string (no BOS; placeholders left as they are).

    Args:
        turns: alternating user/assistant turns starting with the user; ending with a user turn renders the
            generation prompt (ending with "ASSISTANT:").

    Returns:
        E.g. `"A chat … questions. USER: Hi ASSISTANT: Hello!</s>USER: Draw a cat ASSISTANT:"`.

    Raises:
        ValueError: bad turn order.
    """
    _check_turns(turns, turns[-1].role if turns else "user")
    template = VICUNA_V1
    text = template.system + template.sep
    for turn in turns:
        if turn.role == "user":
            text += f"{template.user_role}:{template.sep}{turn.text}{template.sep}{template.assistant_role}:"
        else:
            text += f"{template.sep}{turn.text}{template.sep2}"
    return text


def build_training_example(
    tokenizer: PreTrainedTokenizerBase, turns: list[Turn], signal_ids: dict[Modality, list[int]]
) -> Example:
    """Tokenise a conversation for training, labelling only the assistant answers and their EOS.

    Args:
        tokenizer: the LLM tokenizer (from `load_tokenizer`).
        turns: alternating turns, starting with the user and ending with the assistant.
        signal_ids: signal-token ids per modality (`signal_token_ids`); an assistant placeholder becomes them.

    Returns:
        Example whose `input_ids` start with BOS and hold a sentinel per user-side placeholder; `labels` are
        IGNORE_INDEX except on assistant text, signal ids and the EOS closing each answer.

    Raises:
        ValueError: bad turn order, or an assistant placeholder for a modality without signal ids.
    """
    _check_turns(turns, "assistant")
    segments = _build_segments(turns, tokenizer.eos_token_id, signal_ids)
    return _encode_segments(tokenizer, segments)


def build_generation_prompt(
    tokenizer: PreTrainedTokenizerBase, turns: list[Turn], signal_ids: dict[Modality, list[int]] | None = None
) -> list[int]:
    """Tokenise a conversation up to "ASSISTANT:" for the model to continue.

    Earlier assistant turns are rendered exactly as in training (answers, signal ids, EOS).

    Args:
        tokenizer: the LLM tokenizer.
        turns: alternating turns, starting and ending with the user.
        signal_ids: signal-token ids per modality; None reads them from the tokenizer (`find_signal_token_ids`).

    Returns:
        Prompt ids starting with BOS, with sentinels where user-side media go.

    Raises:
        ValueError: bad turn order.
    """
    _check_turns(turns, "user")
    if signal_ids is None:
        signal_ids = find_signal_token_ids(tokenizer)
    segments = _build_segments(turns, tokenizer.eos_token_id, signal_ids)
    return _encode_segments(tokenizer, segments).input_ids


def system_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids every rendered conversation opens with: BOS, the system prompt and the first user role tag.

    Text is cut before the space that follows "USER:", where whole-string tokenisation has a boundary anyway, so for
    sentencepiece vocabularies these ids are a prefix of every `build_training_example` / `build_generation_prompt`.
    Shared-prefix reuse (`nextgpt.llm.prefix_cache`) still checks each batch against them.

    Args:
        tokenizer: the LLM tokenizer.

    Returns:
        E.g. `[BOS, ...ids of "A chat ... questions. USER:"]`.

    Raises:
        ValueError: the tokenizer has no BOS token.
    """
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the Vicuna template needs a LLaMA-style tokenizer")
    template = VICUNA_V1
    text = f"{template.system}{template.sep}{template.user_role}:"
    return [tokenizer.bos_token_id, *encode_chunk(tokenizer, text, "start")]


def check_tokenization(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    example: Example | list[int],
    signal_ids: dict[Modality, list[int]] | None = None,
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
    segments = _build_segments(turns, tokenizer.eos_token_id, signal_ids)
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
