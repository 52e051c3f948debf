"""Serving: the champion ensemble over HTTP (BentoML, ``bentos/service.py``) and gRPC, with the logic here.

Importable without BentoML: :mod:`alphaforge.serving.model` (a loaded ensemble and its input rules),
:mod:`alphaforge.serving.host` (registry, cache, fallback, routing, request log),
:mod:`alphaforge.serving.api` (the request handlers both transports call) and
:mod:`alphaforge.serving.grpc_server`.
"""
