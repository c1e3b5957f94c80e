"""Packaging for pushd.

``twisted.plugins`` is listed as a package on purpose: it is how
``twistd pushd`` and the backend plugins are found after ``pip install``.
There must never be an ``__init__.py`` under ``twisted/`` (it would shadow
Twisted itself).
"""

from pathlib import Path

from setuptools import setup

setup(
    name="pushd",
    version="0.1.0",
    description="Real-time push server (WebSocket, SSE, HTTP polling) on Twisted.",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=[
        "pushd",
        "pushd.api",
        "pushd.backends",
        "pushd.transports",
        "twisted.plugins",
    ],
    package_data={
        "pushd": ["static/*", "static/demo/*", "openapi.json"],
        "twisted": ["plugins/pushd_plugin.py"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=23.10",
        # pushd.transports.lean reads Autobahn internals (test_connections.py
        # checks them); a new major is taken deliberately.
        "autobahn>=25.10,<27",
        "klein>=23.5",
        "txredisapi>=1.6,<1.7",
        # txredisapi reads replies with hiredis' C parser when it is there
        # (pushd.backends.redis_commands; bench/README.md, Redis)
        "hiredis>=2",
        "zope.interface>=6",
        "pyyaml>=6",
        "pyjwt>=2.8",
        "prometheus_client>=0.17",
        "httptools>=0.6",  # the front door's HTTP/1.1 parser (llhttp)
    ],
    extras_require={
        # Pinned: the checks .ci/run enforces must not change under us.
        "dev": ["ruff==0.17.6", "mypy==2.4.1", "mypy-zope==1.0.17"],
        # selenium drives Debian's chromium through its chromedriver (explicit
        # paths, so it never downloads a browser or a driver).
        # pushd.txclient: the publishing client for Twisted programs.
        "treq": ["treq>=23.11"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=23.11",
            "pytest-timeout",
            "selenium>=4.11",
            # Pusher's official server library, for the Pusher API tests.
            "pusher>=3.3,<4",
            "schemathesis>=4,<5",
            # Property-based fuzzing of client input (tests/test_fuzz.py).
            "hypothesis>=6.100",
        ],
    },
    entry_points={"console_scripts": ["pushd = pushd.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP",
    ],
)
