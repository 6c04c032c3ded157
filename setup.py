"""The compiled parts of pacslb: the C fast path of the HTTP head parsers (src/pacslb/core/heads.py
says why) and the l7-dicom relay's hot loop (src/pacslb/proxy/_pdufast.c). Each has a Python
twin that runs where it is not built. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pacslb.core._headfast",
            ["src/pacslb/core/_headfast.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "pacslb.proxy._pdufast",
            ["src/pacslb/proxy/_pdufast.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
