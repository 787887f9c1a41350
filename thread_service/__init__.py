"""The public thread-service: durable agent threads, turns and project trust."""
