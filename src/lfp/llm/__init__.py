"""LLM serving: an OpenAI-compatible client, the local llama.cpp server, prompts."""
