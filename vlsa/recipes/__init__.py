"""Applications on top of the library: the demo recipe (generate -> label -> train -> evaluate)."""
