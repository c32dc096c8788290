"""Text models: the tokenizer (``tokenizer/``: tokenizer.json components, ``AutoTokenizer``, the stream
decoder), chat templates (``chat_template``), the causal language model and its KV-cache step
(``causal_lm``), and the text-generation pipeline (``pipeline``)."""
