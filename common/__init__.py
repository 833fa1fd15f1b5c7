"""Pieces shared by the three services: flags, model loading, server start-up, metrics."""
