"""The internal model-service: one gRPC gateway in front of every model provider."""
