"""Installation script of speechbrain_s4."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "speechbrain_s4" / "__init__.py").read_text(), version)

setup(
    name="speechbrain_s4",
    version=version["__version__"],
    description=(
        "State-space speech separation (S4M, SPMamba) as a SpeechBrain plugin"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["speechbrain_s4", "speechbrain_s4.*"]),
    package_data={
        "speechbrain_s4": ["pretrained/*/*", "csrc/*.cpp", "ssm/csrc/*.cpp"]
    },
    include_package_data=True,
    install_requires=[
        "speechbrain>=1.1,<1.2",
        # Never newer than 2.14.1: the newest build this environment installs.
        "torch>=2.1,<=2.14.1",
        "torchaudio>=2.1",
        "hyperpyyaml>=1.2",
        "soundfile>=0.12",
        "numpy>=1.24",
        "fast_bss_eval>=0.1.4",
        "tqdm",
        "matplotlib>=3.7",
        # builds the fused C++ CPU selective scan on first use
        "ninja",
    ],
    extras_require={
        "test": ["pytest>=7", "mir_eval>=0.7", "scipy", "av>=11"],
        "data": ["av>=11"],
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.2"],
    },
    entry_points={"console_scripts": ["speechbrain-s4=speechbrain_s4.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
