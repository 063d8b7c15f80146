"""The thin HTTP layer: request/response types, the asyncio protocol and the server."""
