"""Side-by-side performance measurements of jaxlayer (run `python -m benchmarks.run`)."""
