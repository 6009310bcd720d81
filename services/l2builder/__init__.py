"""l2builder: rebuilds full L2 books from the streams and upserts them to MongoDB."""
