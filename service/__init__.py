"""api-router: one OpenAI/Anthropic-compatible front door to one configured LLM provider."""

__version__ = "0.1.0"
