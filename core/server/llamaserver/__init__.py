"""llama-server's own routes: /tokenize, /detokenize and the rerank API (also Cohere's and Jina's shape)."""
