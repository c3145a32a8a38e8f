"""Labs for cloudd's tests, demo and benchmarks: agents in network namespaces, QEMU test
guests, the demo. Not part of the product: never in the cloudd wheel."""
