"""The project's one compiled part: the calibration histogram's counting loop
(qaic_assets/cpu_compiler/_bins.c), a plain C library loaded with ctypes. Optional: without a C
compiler the install goes on and the CPU compiler counts with numpy (slower). Everything else is in
pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("qaic_assets.cpu_compiler._bins", ["qaic_assets/cpu_compiler/_bins.c"], optional=True)])
