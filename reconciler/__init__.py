"""A GitOps reconciler for LLM inference engines (llama.cpp, vLLM, Docker) on GPU servers."""

__version__ = "0.1.0"
