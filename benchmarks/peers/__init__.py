"""Mechanisms of the compared methods that neither ``avalanche_sdlora`` nor Avalanche provides.

One module per mechanism (a model, a strategy or a plugin, with the reference each fact was read from); the
registrations that turn them into methods of the harness live in :mod:`benchmarks.methods`, one file per method.
"""
