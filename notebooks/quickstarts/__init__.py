"""The quickstart notebooks as Python cell lists, one module per method; ``notebooks/build.py`` writes them."""
