"""An example third-party pushd backend, shipped as its own package.

Installing it drops ``twisted/plugins/pushd_backend_example.py`` next to
pushd's own plugin module, and ``twistd pushd --help-backends`` lists it.
"""

from setuptools import setup

setup(
    name="pushd-backend-example",
    version="0.1.0",
    description="Example pushd backend plugin: memory backend with a publish log.",
    py_modules=["pushd_example_backend"],
    packages=["twisted.plugins"],
    package_data={"twisted": ["plugins/pushd_backend_example.py"]},
    install_requires=["pushd"],
)
