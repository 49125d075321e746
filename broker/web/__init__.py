"""The broker's web front: HTTP/JSON API, WebSocket live updates, and the static web UI."""

from .app import create_app, serve_web

__all__ = ["create_app", "serve_web"]
