"""top10: caches the latest orderBook10 of every symbol in Redis keys, as a consumer group."""
