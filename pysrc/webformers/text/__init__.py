"""Text models: the tokenizer, chat templates and the causal language model."""
