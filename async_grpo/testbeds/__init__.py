"""Exact (enumerable) testbeds for asynchronous GRPO.

`exact`: every response of every prompt is enumerated, so J(θ), the surrogate-gradient mapping
H(θ, φ), the total derivative ∇J(θ) and the staleness bias δ are exact sums; whole (η, seed, S)
training grids run as one jitted, vmapped program.
"""
