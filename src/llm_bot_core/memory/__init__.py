"""Sessions, the short-term window, progressive summaries, prompt assembly and the chat use case."""
