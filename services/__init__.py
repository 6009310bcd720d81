"""bookstream: BitMEX websocket to durable, scalable order-book state over Redis Streams and MongoDB."""
