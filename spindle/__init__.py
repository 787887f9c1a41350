"""Spindle: durable AI-agent conversation threads over gRPC.

This package holds what both services share: the generated protobuf code
(`spindle.v1`), the domain types of conversation items and model calls, the
domain errors, and the gRPC plumbing both servers use.
"""
