"""The chaos suite reuses the end-to-end fixtures: the real chat function and the fake model."""

from tests.e2e.conftest import chat_function, fake_llm, llm

__all__ = ["chat_function", "fake_llm", "llm"]
