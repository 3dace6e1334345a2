"""Chat templates as data: one registry that the data pipeline, training and inference all read.

A template says how a conversation becomes a token sequence: system prompt, role tags, what closes an answer, the
strings that stop generation, and how an input media item sits in the prompt. The template is chosen by
`model.llm.template` and saved with every checkpoint's config, so a checkpoint is always run with the template it
was trained with (the original trained with Vicuna v1 and predicted with another).

| name          | rendering (after BOS)                                                   | answer ends with  |
|---------------|-------------------------------------------------------------------------|-------------------|
| `vicuna_v1`   | `SYSTEM USER: {q} ASSISTANT: {a}</s>USER: …`                             | EOS               |
| `vicuna_v0`   | `### Human: <Img>{media}</Img> {q}\\n### Assistant: {a}\\n### Human: …`  | `\\n###` (no EOS) |
| `llama_2_chat`| `[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] …` | EOS               |
| `plain`       | `{q}{a}</s>`                                                             | EOS               |

`vicuna_v0` is the legacy NExT-GPT release (`7b_tiva_v0`): every modality's single projected token is wrapped in the
added tokens `<Img>` … `</Img>`, several items of one modality given together are summed into that one token, and
its generation prompt follows the legacy demo exactly — each text piece that follows a media item is tokenised
on its own behind a fresh BOS, as that code did.

    template = get_template("vicuna_v0")
    template.stop_strings  # ("###",)
"""

from __future__ import annotations

from dataclasses import dataclass

from nextgpt.config_loader import ConfigError

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
)


@dataclass(frozen=True)
class ChatTemplate:
    """How turns are rendered; the renderer in `nextgpt.llm.conversation` reads nothing else.

    Attributes:
        name: registry key (`model.llm.template`).
        system: text right after BOS (may be empty).
        first_user_prefix: text before the first user turn's content.
        user_prefix: text before every later user turn's content.
        user_suffix: text after a user turn; a generation prompt ends with it.
        assistant_prefix: labelled text before an answer (the space the answer's first piece carries).
        assistant_suffix: labelled text after an answer (legacy `\\n###`), before the EOS if `answer_eos`.
        answer_eos: an answer ends with the EOS id (labelled).
        bos_per_turn: every user turn after the first starts with a fresh BOS (Llama-2 chat).
        stop_strings: text that ends a reply besides EOS (cut from the reply).
        media_wrap: added tokens around every input media item, e.g. ("<Img>", "</Img>"); added to the tokenizer
            before the signal tokens, so their ids are the legacy ones (32000, 32001).
        media_first: user-side media go before the turn's text, separated by one space (legacy layout).
        sum_adjacent_media: consecutive input items of one modality in one turn become one summed token (legacy).
        legacy_prompt_pieces: generation prompts are tokenised as the legacy demo did: text pieces split at media,
            each encoded alone behind its own BOS.
    """

    name: str
    system: str = ""
    first_user_prefix: str = ""
    user_prefix: str = ""
    user_suffix: str = ""
    assistant_prefix: str = ""
    assistant_suffix: str = ""
    answer_eos: bool = True
    bos_per_turn: bool = False
    stop_strings: tuple[str, ...] = ()
    media_wrap: tuple[str, str] | None = None
    media_first: bool = False
    sum_adjacent_media: bool = False
    legacy_prompt_pieces: bool = False

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        """Tokens the template adds to the vocabulary (before the signal tokens)."""
        return self.media_wrap or ()


TEMPLATES: dict[str, ChatTemplate] = {
    "vicuna_v1": ChatTemplate(
        name="vicuna_v1",
        system=VICUNA_V1_SYSTEM + " ",
        first_user_prefix="USER: ",
        user_prefix="USER: ",
        user_suffix=" ASSISTANT:",
        assistant_prefix=" ",
    ),
    "vicuna_v0": ChatTemplate(
        name="vicuna_v0",
        first_user_prefix="### Human: ",
        user_prefix=" Human: ",
        user_suffix="\n### Assistant:",
        assistant_prefix=" ",
        assistant_suffix="\n###",
        answer_eos=False,
        stop_strings=("###",),
        media_wrap=("<Img>", "</Img>"),
        media_first=True,
        sum_adjacent_media=True,
        legacy_prompt_pieces=True,
    ),
    "llama_2_chat": ChatTemplate(
        name="llama_2_chat",
        first_user_prefix=f"[INST] <<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\n",
        user_prefix="[INST] ",
        user_suffix=" [/INST]",
        assistant_prefix=" ",
        assistant_suffix=" ",
        bos_per_turn=True,
    ),
    "plain": ChatTemplate(name="plain"),
}
"""Every template by name; `model.llm.template` must be one of these keys."""


def get_template(name: str) -> ChatTemplate:
    """The registered template called `name`.

    Raises:
        ConfigError: unknown name (lists the valid ones).
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"model.llm.template is {name!r}; valid: {sorted(TEMPLATES)}") from None
