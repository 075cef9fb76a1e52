"""A small HTTP/1.1 server on asyncio + httptools, shared by the simulator and the router."""
