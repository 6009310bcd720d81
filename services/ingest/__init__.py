"""ingest: reads the BitMEX websocket and publishes raw frames to per-symbol Redis Streams."""
