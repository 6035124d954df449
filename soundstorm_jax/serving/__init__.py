"""Serving generation: requests (request files, HTTP) resolved, batched and decoded by one engine."""
from soundstorm_jax.serving.engine import CompileClock, Engine, Job, Result, request_key
from soundstorm_jax.serving.requests import FIELDS, Request, RequestError, parse_request

__all__ = ["CompileClock", "Engine", "FIELDS", "Job", "Request", "RequestError", "Result", "parse_request",
           "request_key"]
