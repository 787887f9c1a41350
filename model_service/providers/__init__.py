"""Model providers: the embedded offline one and OpenAI-compatible HTTP ones."""
