"""Item features: images (data/images.py downloads them), CLIP and text embeddings, captions, summaries."""
