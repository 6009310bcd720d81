"""The runtime the services share: settings, logging, health server, lifecycle and the Redis clients."""
