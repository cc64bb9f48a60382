"""An ASGI sample app for apprelease (FastAPI); the app object is `fastapi_app.main:app`."""

__version__ = "1.0.0"
