"""Harness shared by tests and benchmarks: fakes, a loopback WebRTC receiver, the network-namespace guard."""
