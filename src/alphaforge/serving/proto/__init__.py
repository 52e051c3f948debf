"""Generated gRPC modules of ``alphaforge_serving.proto`` (see the comment at its top to regenerate)."""
