"""apprelease: declarative releases of Python web apps onto bare Linux hosts."""

__version__ = "0.1.0"
