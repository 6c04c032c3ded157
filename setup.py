"""The one compiled part of pacslb: the C fast path of the HTTP head parsers
(src/pacslb/core/heads.py says why). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pacslb.core._headfast",
            ["src/pacslb/core/_headfast.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
