"""Installs async_grpo: JAX research code for asynchronous GRPO under rollout staleness."""

import setuptools

setuptools.setup(
    name="async_grpo",
    version="0.1.0",
    description=(
        "JAX research code for asynchronous GRPO under rollout staleness "
        "(staleness-learning-rate scaling laws)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["async_grpo", "async_grpo.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.14",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.12,<0.14",
        "numpy>=2.0,<3",
        "chex>=0.1.90,<0.2",
        "absl-py>=2.1,<3",
        "ml_collections>=1.0,<2",
        "matplotlib>=3.9,<4",
        "tensorboardX>=2.6,<3",
        "scipy>=1.11,<2",
        "safetensors>=0.4,<1",
        "tokenizers>=0.19,<1",
    ],
    extras_require={
        "dev": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "hypothesis>=6.100,<7",
            # executing notebooks/ in the tests
            "nbclient>=0.10,<1",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
        ],
        # JAX with CUDA on NVIDIA GPUs (Linux x86-64/aarch64): the CUDA 12 or CUDA 13 plugin and
        # its NVIDIA libraries from PyPI, at the same pinned jax. See the README's "On a GPU".
        "cuda12": ["jax[cuda12]>=0.10,<0.12"],
        "cuda13": ["jax[cuda13]>=0.10,<0.12"],
        # Regenerating the Hugging Face parity fixtures (tests/make_hf_fixtures.py, pytest -m hf):
        # ~5.6 GB with torch's GPU libraries, so kept out of the default install.
        "hf": [
            "torch>=2.4",
            "transformers>=4.45",
        ],
    },
)
