"""Semantic memory (RAG): embeddings, vector stores, indexing and search."""
