"""webxample: the sample WSGI app that apprelease deploys in its tests and demo.

The version below is the only place it is written; test helpers rewrite it to build
wheels at other versions, and every response names it (header `X-Served-By`).
"""

__version__ = "1.0.0"
