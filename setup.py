"""Build script: metadata lives in setup.cfg; this adds the optional C kernels.

``restore3d._kernels`` fuses the element-wise passes of the Richardson-Lucy
loop (restore3d/_kernels.c). It is optional: without a C compiler the build
goes on and RL runs the same arithmetic with PyTorch operations.
"""
import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags, link = ["/O2", "/openmp"], []
else:
    # OpenMP: the loops run on PyTorch's own libgomp thread pool (see the
    # C file); reassociation lets the compiler vectorise the dot products
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
             "-fno-trapping-math"]
    link = ["-fopenmp"]

setup(ext_modules=[Extension("restore3d._kernels", ["restore3d/_kernels.c"], extra_compile_args=flags,
                             extra_link_args=link, optional=True)])
