"""Project-owned model implementations (no remote code): ChatGLM v1/v2/v3 and their tokenizers."""
