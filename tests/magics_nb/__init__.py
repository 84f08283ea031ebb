"""Helpers for the magics tests: a real kernel driven over ZMQ, and notebooks run with nbclient."""
