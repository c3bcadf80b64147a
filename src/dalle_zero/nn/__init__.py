"""Building blocks with no DALL-E wiring: attention masks (masks), attention kernels and the key/value
cache (attention), the pre-LN transformer block (block), text/image input embeddings (embeddings)."""
