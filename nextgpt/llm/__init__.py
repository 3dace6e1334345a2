"""The language-model side: tokenizer with signal tokens, frozen backbone with trainable token rows, LoRA,
the Vicuna v1 conversation template and the splicing of media rows into the input embeddings.

    tokenizer = load_tokenizer(cfg.llm.model_path, cfg.signal_tokens)     # nextgpt.llm.tokenizer
    llm = apply_lora(load_llm(cfg.llm, tokenizer), cfg.lora)              # nextgpt.llm.backbone / .lora
    example = build_training_example(tokenizer, turns, signal_ids)        # nextgpt.llm.conversation
"""
