"""sora-worker: insert a row, get a video that never expires."""
