"""The aiohttp + aiortc server: routes, session registry, WebRTC signalling and media tracks."""
