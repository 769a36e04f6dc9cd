"""Scripts MLflow runs to build pyfunc models ("models from code"): no pickled Python objects."""
